import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { generateToken, hashSecret, secretMatches, splitToken } from '../../../src/auth/tokens.ts'

describe('join tokens', () => {
  it('generateToken: public name, 256-bit secret, stored only as its SHA-256', () => {
    const t = generateToken()
    assert.match(t.name, /^tok-[0-9a-f]{12}$/)
    const [name, secret] = t.value.split('.')
    assert.equal(name, t.name)
    assert.match(secret!, /^[A-Za-z0-9_-]{43}$/)
    assert.equal(Buffer.from(secret!, 'base64url').length, 32)
    assert.equal(t.secretHash, createHash('sha256').update(secret!).digest('hex'))
    assert.ok(!t.secretHash.includes(secret!) && !t.value.includes(t.secretHash))
  })

  it('every token is different', () => {
    const names = new Set<string>()
    const values = new Set<string>()
    for (let i = 0; i < 2_000; i++) {
      const t = generateToken()
      names.add(t.name)
      values.add(t.value)
    }
    assert.equal(values.size, 2_000)
    assert.equal(names.size, 2_000)
  })

  it('splitToken round-trips and tolerates the newline of a token file', () => {
    const t = generateToken()
    const secret = t.value.split('.')[1]
    assert.deepEqual(splitToken(t.value), { name: t.name, secret })
    assert.deepEqual(splitToken(`${t.value}\n`), { name: t.name, secret })
    assert.deepEqual(splitToken(`  ${t.value}\r\n`), { name: t.name, secret })
  })

  it('splitToken refuses anything that cannot be one of ours', () => {
    const secret = 'A'.repeat(43)
    const bad = [
      '', 'tok-0123456789ab', `tok-0123456789ab.${secret.slice(1)}`, `tok-0123456789ab.${secret}A`, `tok-0123456789AB.${secret}`,
      `tok-0123456789a.${secret}`, `tak-0123456789ab.${secret}`, `tok-0123456789ab:${secret}`, `tok-0123456789ab.${secret.slice(1)}+`,
      `tok-0123456789ab.${secret.slice(1)}=`, `tok-0123456789ab.${secret}.x`, `tok-0123456789ab. ${secret.slice(1)}`,
      `x tok-0123456789ab.${secret}`, `tok-0123456789ab.${secret}\nsecond line`,
    ]
    for (const v of bad) assert.equal(splitToken(v), undefined, JSON.stringify(v))
  })

  it('secretMatches accepts only the right secret', () => {
    const t = generateToken()
    const { secret } = splitToken(t.value)!
    assert.equal(secretMatches(secret, t.secretHash), true)
    assert.equal(secretMatches(secret.slice(0, -1) + (secret.endsWith('A') ? 'B' : 'A'), t.secretHash), false)
    assert.equal(secretMatches(t.value, t.secretHash), false, 'the whole value is not the secret')
    assert.equal(secretMatches(t.secretHash, t.secretHash), false, 'knowing the hash is not enough')
    assert.equal(secretMatches(secret, generateToken().secretHash), false)
  })

  it('secretMatches never throws on a malformed stored hash', () => {
    for (const h of ['', 'zz', 'abc', 'ab'.repeat(31), 'ab'.repeat(33)]) assert.equal(secretMatches('s', h), false, h)
  })

  it('hashSecret is plain SHA-256 hex of the UTF-8 secret', () => {
    assert.equal(hashSecret('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
  })
})
