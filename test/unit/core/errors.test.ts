import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  ConfigError, ERROR_STATUS, FATAL_IDENTITY_CODES, MemidError, describeError, hasCode, type ErrorCode,
} from '../../../src/core/errors.ts'

const codes = Object.keys(ERROR_STATUS) as ErrorCode[]

describe('error codes', () => {
  it('every code has an HTTP error status and the ERR_ prefix', () => {
    assert.ok(codes.length > 20)
    for (const code of codes) {
      assert.match(code, /^ERR_[A-Z0-9_]+$/)
      const status = ERROR_STATUS[code]
      assert.ok(Number.isInteger(status) && status >= 400 && status <= 599, `${code} -> ${status}`)
    }
  })

  it('a MemidError carries its code, status, name and message', () => {
    for (const code of codes) {
      const e = new MemidError(code, `failed with ${code}`)
      assert.ok(e instanceof Error)
      assert.equal(e.name, 'MemidError')
      assert.equal(e.code, code)
      assert.equal(e.status, ERROR_STATUS[code])
      assert.equal(e.message, `failed with ${code}`)
    }
  })

  it('the fatal identity codes exist and are all refusals', () => {
    assert.ok(FATAL_IDENTITY_CODES.size > 0)
    for (const code of FATAL_IDENTITY_CODES) {
      assert.ok(code in ERROR_STATUS, code)
      assert.equal(ERROR_STATUS[code as ErrorCode], 403, code)
    }
    assert.ok(FATAL_IDENTITY_CODES.has('ERR_LOCKED'))
    assert.ok(!FATAL_IDENTITY_CODES.has('ERR_AUTH_UNREACHABLE'), 'a network failure must be retried, not fatal')
  })

  it('toJSON exposes only code and message, never the stack or cause', () => {
    const e = new MemidError('ERR_TOKEN_EXPIRED', 'the join token expired', { cause: new Error('secret detail') })
    assert.deepEqual(e.toJSON(), { code: 'ERR_TOKEN_EXPIRED', message: 'the join token expired' })
    const text = JSON.stringify({ error: e })
    assert.equal(text, '{"error":{"code":"ERR_TOKEN_EXPIRED","message":"the join token expired"}}')
    assert.doesNotMatch(text, /secret detail|at .*\.ts/)
  })

  it('ConfigError is a MemidError with ERR_CONFIG', () => {
    const e = new ConfigError('services[0].listen: must not be empty')
    assert.ok(e instanceof MemidError)
    assert.equal(e.name, 'ConfigError')
    assert.equal(e.code, 'ERR_CONFIG')
    assert.equal(e.status, 400)
  })

  it('hasCode matches only MemidErrors with one of the codes', () => {
    const e = new MemidError('ERR_LOCKED', 'locked')
    assert.equal(hasCode(e, 'ERR_LOCKED'), true)
    assert.equal(hasCode(e, 'ERR_NOT_FOUND', 'ERR_LOCKED'), true)
    assert.equal(hasCode(e, 'ERR_NOT_FOUND'), false)
    assert.equal(hasCode(Object.assign(new Error('x'), { code: 'ERR_LOCKED' }), 'ERR_LOCKED'), false)
    assert.equal(hasCode(undefined, 'ERR_LOCKED'), false)
  })
})

describe('describeError', () => {
  const oneLine = (s: string) => {
    assert.equal(typeof s, 'string')
    assert.doesNotMatch(s, /[\r\n]/, JSON.stringify(s))
    assert.doesNotMatch(s, /^\s+at /m)
    assert.ok(s.length <= 400, `${s.length} characters`)
  }

  it('returns a MemidError message as is', () => {
    assert.equal(describeError(new MemidError('ERR_NOT_FOUND', 'no such role "ci"')), 'no such role "ci"')
  })

  it('keeps a MemidError on one line even when its message has line breaks', () => {
    // Messages can quote values from config files or from the auth server's answers.
    const s = describeError(new MemidError('ERR_AUTH_BAD_RESPONSE', 'auth said: first\nsecond\r\nthird'))
    oneLine(s)
    assert.match(s, /first/)
  })

  it('reduces foreign errors to the first line of their message, without a stack', () => {
    const err = new Error('first line\n    at fake (/x.ts:1:1)\nmore')
    const s = describeError(err)
    oneLine(s)
    assert.equal(s, 'first line')
    assert.ok(!s.includes(String(err.stack).split('\n')[1]))
    assert.equal(describeError(new Error('windows line\r\nnext')), 'windows line')
  })

  it('adds the system error code when the message lacks it', () => {
    const err = Object.assign(new Error('connect failed'), { code: 'ECONNREFUSED' })
    assert.equal(describeError(err), 'connect failed (ECONNREFUSED)')
    const named = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })
    assert.equal(describeError(named), 'connect ECONNREFUSED 127.0.0.1:1')
  })

  it('caps very long messages', () => {
    oneLine(describeError(new Error('x'.repeat(100_000))))
    oneLine(describeError('y'.repeat(100_000)))
  })

  it('handles thrown non-errors', () => {
    assert.equal(describeError('plain string\nsecond'), 'plain string')
    assert.equal(describeError(42), '42')
    assert.equal(describeError(undefined), 'undefined')
    assert.equal(describeError(null), 'null')
    oneLine(describeError({ toString: () => 'obj\nline' }))
  })

  it('a real failure from node:fs stays one line', async () => {
    const { readFile } = await import('node:fs/promises')
    const err = await readFile('/nonexistent/memid/file').catch((e: unknown) => e)
    const s = describeError(err)
    oneLine(s)
    assert.match(s, /ENOENT/)
  })
})
