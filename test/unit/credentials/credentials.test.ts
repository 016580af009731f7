import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { CredentialSource, type IssuedCredential } from '../../../src/credentials/credentials.ts'
import type { Clock } from '../../../src/core/clock.ts'
import { MemidError } from '../../../src/core/errors.ts'

/** A clock the test moves by hand. */
class ManualClock implements Clock {
  t: number
  constructor(t: number) {
    this.t = t
  }
  now(): number {
    return this.t
  }
}

interface TestCredential extends IssuedCredential {
  privateKey: KeyObject
}

const T0 = Date.parse('2030-01-01T00:00:00.000Z')
const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey

function cred(serial: string, notAfter: number): TestCredential {
  return { serial, notBefore: new Date(T0 - 60_000), notAfter: new Date(notAfter), privateKey: key }
}

function throwsCode(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MemidError, String(err))
    assert.equal(err.code, code)
    if (message) assert.match(err.message, message)
    return true
  })
}

describe('CredentialSource', () => {
  it('current() is ERR_NOT_READY before the first credential, with the last failure', () => {
    const src = new CredentialSource<TestCredential>('kube-proxy:prod', new ManualClock(T0))
    throwsCode(() => src.current(), 'ERR_NOT_READY', /^no kube-proxy:prod credential yet$/)
    assert.equal(src.valid(), false)
    assert.equal(src.peek(), undefined)
    src.fail(new MemidError('ERR_ACCESS_DENIED', 'role does not allow kube cluster "prod"'))
    throwsCode(() => src.current(), 'ERR_NOT_READY', /no kube-proxy:prod credential yet: role does not allow kube cluster "prod"/)
  })

  it('current() returns the credential while it is valid', () => {
    const clock = new ManualClock(T0)
    const src = new CredentialSource<TestCredential>('bot', clock)
    const c = cred('aa', T0 + 60_000)
    src.set(c)
    assert.equal(src.current(), c)
    clock.t = T0 + 59_999
    assert.equal(src.current(), c)
    assert.equal(src.valid(), true)
  })

  it('current() is ERR_IDENTITY_EXPIRED from notAfter on, naming the time and why renewal failed', () => {
    const clock = new ManualClock(T0)
    const src = new CredentialSource<TestCredential>('db-tunnel:orders', clock)
    const c = cred('bb', T0 + 60_000)
    src.set(c)
    clock.t = T0 + 60_000
    throwsCode(() => src.current(), 'ERR_IDENTITY_EXPIRED', /db-tunnel:orders certificate expired at 2030-01-01T00:01:00\.000Z/)
    assert.equal(src.valid(), false)
    assert.equal(src.peek(), c, 'peek still shows it, for status')
    src.fail(new Error('connect ECONNREFUSED 127.0.0.1:3025\n    at TCPConnectWrap'))
    throwsCode(() => src.current(), 'ERR_IDENTITY_EXPIRED', /could not be renewed: connect ECONNREFUSED 127\.0\.0\.1:3025$/)
  })

  it('set() emits renewed with the new credential and clears the last error', () => {
    const clock = new ManualClock(T0)
    const src = new CredentialSource<TestCredential>('bot', clock)
    const seen: TestCredential[] = []
    src.on('renewed', (c) => seen.push(c))
    const a = cred('01', T0 + 1_000)
    src.set(a)
    clock.t = T0 + 5_000
    src.fail(new Error('auth down'))
    assert.equal(src.lastError, 'auth down')
    const b = cred('02', T0 + 60_000)
    src.set(b)
    assert.deepEqual(seen, [a, b])
    assert.equal(src.lastError, undefined)
    assert.equal(src.current(), b, 'a renewal after expiry makes it usable again')
  })

  it('a failed renewal keeps the current credential in use while it is valid', () => {
    const clock = new ManualClock(T0)
    const src = new CredentialSource<TestCredential>('bot', clock)
    const c = cred('cc', T0 + 60_000)
    src.set(c)
    src.fail(new MemidError('ERR_AUTH_UNREACHABLE', 'auth unreachable'))
    assert.equal(src.current(), c)
  })

  it('state() reports pending, valid and expired, with no secret in it', () => {
    const clock = new ManualClock(T0)
    const src = new CredentialSource<TestCredential>('bot', clock)
    assert.deepEqual(src.state(), { status: 'pending' })
    src.fail(new Error('token expired'))
    assert.deepEqual(src.state(), { status: 'pending', lastError: 'token expired' })
    src.set(cred('0a1b', T0 + 60_000))
    assert.deepEqual(src.state(), { status: 'valid', serial: '0a1b', notAfter: '2030-01-01T00:01:00.000Z' })
    src.fail(new Error('auth down'))
    assert.deepEqual(src.state(), { status: 'valid', serial: '0a1b', notAfter: '2030-01-01T00:01:00.000Z', lastError: 'auth down' })
    clock.t = T0 + 60_000
    assert.deepEqual(src.state(), { status: 'expired', serial: '0a1b', notAfter: '2030-01-01T00:01:00.000Z', lastError: 'auth down' })
    const text = JSON.stringify(src.state())
    const pem = key.export({ format: 'pem', type: 'pkcs8' }) as string
    assert.ok(!text.includes(pem.split('\n')[1]!))
  })

  it('uses the system clock by default', () => {
    const src = new CredentialSource<TestCredential>('bot')
    src.set(cred('dd', Date.now() + 60_000))
    assert.equal(src.valid(), true)
    src.set(cred('ee', Date.now() - 1))
    throwsCode(() => src.current(), 'ERR_IDENTITY_EXPIRED')
  })
})
