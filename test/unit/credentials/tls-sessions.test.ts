import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { UpstreamSessions } from '../../../src/credentials/tls-sessions.ts'

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
})
