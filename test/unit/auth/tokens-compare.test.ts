import { it, mock } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import { syncBuiltinESMExports } from 'node:module'
import { generateToken, hashSecret, secretMatches } from '../../../src/auth/tokens.ts'

// Timing cannot be measured reliably in a test; what can be checked is that the comparison
// of a presented secret with the stored hash goes through crypto.timingSafeEqual.
it('a presented join secret is compared with the stored hash through crypto.timingSafeEqual', () => {
  const t = generateToken()
  const secret = t.value.split('.')[1]!
  const spy = mock.method(crypto, 'timingSafeEqual')
  syncBuiltinESMExports()
  try {
    assert.equal(secretMatches(secret, t.secretHash), true)
    assert.equal(spy.mock.callCount(), 1, 'the matching secret was compared in constant time')
    assert.equal(secretMatches(`${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`, t.secretHash), false)
    assert.equal(spy.mock.callCount(), 2, 'a wrong secret too')
    for (const call of spy.mock.calls) assert.equal((call.arguments[0] as Buffer).length, 32, 'the SHA-256 digests are compared')
  } finally {
    spy.mock.restore()
    syncBuiltinESMExports()
  }
  assert.equal(secretMatches(secret, hashSecret(secret).slice(0, 62)), false, 'a truncated stored hash never matches')
})
