import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { SESSION_REFRESH_MS, UpstreamSessions } from '../../../src/credentials/tls-sessions.ts'

describe('UpstreamSessions', () => {
  const a = { name: 'credential a' }
  const b = { name: 'credential b' }

  test('a session is offered only for the credential and upstream it was made with', () => {
    const s = new UpstreamSessions()
    const session = Buffer.from('session for a')
    s.remember(a, 'db:5432', session, a)
    assert.equal(s.get(a, 'db:5432'), session)
    assert.equal(s.get(b, 'db:5432'), undefined)
    assert.equal(s.get(a, 'other:5432'), undefined)
  })

  test('a session from a connection dialed with a credential that is no longer current is not kept', () => {
    const s = new UpstreamSessions()
    s.remember(a, 'db:5432', Buffer.from('late session for a'), b)
    assert.equal(s.get(a, 'db:5432'), undefined)
    assert.equal(s.get(b, 'db:5432'), undefined)
  })

  test('drop() forgets the session and zeroes its bytes; a newer session zeroes the one it replaces', () => {
    const s = new UpstreamSessions()
    const first = Buffer.from('first')
    const second = Buffer.from('second')
    s.remember(a, 'db:5432', first, a)
    s.remember(a, 'db:5432', second, a)
    assert.ok(first.every((x) => x === 0))
    assert.equal(s.get(a, 'db:5432'), second)
    s.drop()
    assert.ok(second.every((x) => x === 0))
    assert.equal(s.get(a, 'db:5432'), undefined)
  })

  test('a connection asks for a session only when none is kept, the kept one is due for refresh, or the upstream rejected it', () => {
    let now = 1000
    const s = new UpstreamSessions(() => now)
    assert.equal(s.wantsSession(a, 'db:5432'), true)
    const first = Buffer.from('first')
    s.remember(a, 'db:5432', first, a)
    assert.equal(s.wantsSession(a, 'db:5432'), false)
    assert.equal(s.wantsSession(b, 'db:5432'), true)
    assert.equal(s.wantsSession(a, 'other:5432'), true)
    now += SESSION_REFRESH_MS
    assert.equal(s.wantsSession(a, 'db:5432'), true)
    s.remember(a, 'db:5432', Buffer.from('second'), a)
    assert.equal(s.wantsSession(a, 'db:5432'), false)
    // An outcome for a session that has been replaced since tells nothing.
    s.resumed(first, false)
    assert.equal(s.wantsSession(a, 'db:5432'), false)
    // Not resumed (expired, server restarted): forgotten and zeroed, so the next one asks.
    const second = s.get(a, 'db:5432') as Buffer
    s.resumed(second, false)
    assert.equal(s.get(a, 'db:5432'), undefined)
    assert.ok(second.every((x) => x === 0))
    assert.equal(s.wantsSession(a, 'db:5432'), true)
  })

  test('an upstream that twice in a row resumes a session once and then refuses it is asked for a session on every connection until renewal', () => {
    const s = new UpstreamSessions(() => 0)
    const useOnce = (name: string) => {
      const session = Buffer.from(name)
      s.remember(a, 'db:5432', session, a)
      assert.equal(s.wantsSession(a, 'db:5432'), false)
      s.resumed(session, true)
      s.resumed(session, false)
    }
    useOnce('first')
    // One refusal after use may be a restart or a ticket-key rotation: the next session is trusted again.
    s.remember(a, 'db:5432', Buffer.from('after restart'), a)
    assert.equal(s.wantsSession(a, 'db:5432'), false)
    useOnce('second')
    s.remember(a, 'db:5432', Buffer.from('next'), a)
    assert.equal(s.wantsSession(a, 'db:5432'), true)
    s.drop()
    s.remember(b, 'db:5432', Buffer.from('renewed'), b)
    assert.equal(s.wantsSession(b, 'db:5432'), false)
  })

  test('a session resumed twice shows the upstream takes sessions more than once: an earlier refusal is forgotten', () => {
    const s = new UpstreamSessions(() => 0)
    const first = Buffer.from('first')
    s.remember(a, 'db:5432', first, a)
    s.resumed(first, true)
    s.resumed(first, false)
    const second = Buffer.from('second')
    s.remember(a, 'db:5432', second, a)
    s.resumed(second, true)
    s.resumed(second, true)
    s.resumed(second, false)
    s.remember(a, 'db:5432', Buffer.from('third'), a)
    assert.equal(s.wantsSession(a, 'db:5432'), false)
  })
})
