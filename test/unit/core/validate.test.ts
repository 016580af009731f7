import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { z } from 'zod'
import { MemidError } from '../../../src/core/errors.ts'
import { durationSchema, formatPath, nameSchema, parseWith, principalSchema } from '../../../src/core/validate.ts'

const schema = z.strictObject({
  version: z.literal('v1'),
  services: z.array(z.strictObject({
    type: z.string(),
    listen: z.string().regex(/^(\/|[a-z0-9.]+:\d+$)/, 'must be host:port or a socket path'),
    timeout: durationSchema.optional(),
  })),
})

function messageOf(value: unknown, prefix = ''): string {
  try {
    parseWith(schema, value, 'ERR_CONFIG', prefix)
  } catch (err) {
    assert.ok(err instanceof MemidError)
    assert.equal(err.code, 'ERR_CONFIG')
    return err.message
  }
  assert.fail('parsed a value that should have been refused')
}

const ok = { version: 'v1', services: [{ type: 'a', listen: '127.0.0.1:1' }, { type: 'b', listen: '/run/x.sock' }] }

describe('parseWith', () => {
  it('returns the typed value when it parses', () => {
    assert.deepEqual(parseWith(schema, ok), ok)
  })

  it('names the path of the first problem, array indexes in brackets', () => {
    const bad = { ...ok, services: [ok.services[0], { type: 'b', listen: 'nowhere' }] }
    assert.equal(messageOf(bad), 'services[1].listen: must be host:port or a socket path')
  })

  it('names unknown keys, at the top and nested', () => {
    assert.equal(messageOf({ ...ok, listen_addr: 'x' }), 'unknown key "listen_addr"')
    assert.equal(messageOf({ ...ok, a: 1, b: 2 }), 'unknown keys "a", "b"')
    const nested = { ...ok, services: [{ ...ok.services[0], lsiten: 'typo' }] }
    assert.equal(messageOf(nested), 'services[0]: unknown key "lsiten"')
  })

  it('names the path of a wrong type', () => {
    assert.match(messageOf({ ...ok, services: [{ type: 'a', listen: 8080 }] }), /^services\[0\]\.listen: .*string/)
    assert.match(messageOf({ ...ok, services: 'all' }), /^services: /)
  })

  it('puts the prefix first, and still names the path', () => {
    assert.equal(messageOf({ ...ok, services: [{ type: 'a', listen: '127.0.0.1:1', timeout: '5x' }] }, 'agent.yaml: '),
      'agent.yaml: services[0].timeout: must be a duration like 90s, 20m, 1h')
  })

  it('a top-level problem has no dangling colon-space path', () => {
    const m = messageOf(7)
    assert.doesNotMatch(m, /^: /)
    assert.ok(m.length > 0)
  })

  it('uses ERR_BAD_REQUEST by default', () => {
    assert.throws(() => parseWith(schema, {}), (e: unknown) => e instanceof MemidError && e.code === 'ERR_BAD_REQUEST' && e.status === 400)
  })
})

describe('formatPath', () => {
  it('joins keys with dots and indexes with brackets', () => {
    assert.equal(formatPath([]), '')
    assert.equal(formatPath(['services', 1, 'listen']), 'services[1].listen')
    assert.equal(formatPath([0, 'a', 2, 3, 'b']), '[0].a[2][3].b')
  })
})

describe('shared field schemas', () => {
  it('nameSchema takes plain names and refuses paths, spaces and control characters', () => {
    for (const n of ['ci', 'prod-eu.1', 'bot@example', 'A_b', 'x'.repeat(63)]) assert.ok(nameSchema.safeParse(n).success, n)
    for (const n of ['', '-ci', '.ci', 'a/b', '../x', 'a b', 'a\nb', 'x'.repeat(64), 'é']) assert.ok(!nameSchema.safeParse(n).success, JSON.stringify(n))
  })

  it('principalSchema refuses separators that could smuggle extra principals', () => {
    for (const p of ['deploy', 'system:masters', 'app_user', 'dev-team']) assert.ok(principalSchema.safeParse(p).success, p)
    for (const p of ['', 'a,b', 'a b', 'a\tb', 'a\u0000', 'a"b', "a'b", 'a\\b', 'a/b', 'x'.repeat(129)]) {
      assert.ok(!principalSchema.safeParse(p).success, JSON.stringify(p))
    }
  })

  it('durationSchema accepts durations only', () => {
    assert.ok(durationSchema.safeParse('20m').success)
    assert.ok(!durationSchema.safeParse('20').success)
    assert.ok(!durationSchema.safeParse(20).success)
  })
})
