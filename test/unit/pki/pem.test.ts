import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { derToPemBuffer, withPrivateKeyPem } from '../../../src/pki/pem.ts'

/** The textbook encoding, for comparison: base64 in 64-character lines. */
function referencePem(der: Buffer, label: string): string {
  const b64 = der.toString('base64')
  const lines = b64.match(/.{1,64}/g) ?? []
  return `-----BEGIN ${label}-----\n${lines.map((l) => `${l}\n`).join('')}-----END ${label}-----\n`
}

const keys: [string, KeyObject][] = [
  ['ec P-256', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey],
  ['ec P-384', generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey],
  ['ec P-521', generateKeyPairSync('ec', { namedCurve: 'P-521' }).privateKey],
  ['ed25519', generateKeyPairSync('ed25519').privateKey],
  ['ed448', generateKeyPairSync('ed448').privateKey],
  ['x25519', generateKeyPairSync('x25519').privateKey],
  ['rsa 1024', generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey],
  ['rsa 2048', generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey],
  ['rsa 3072', generateKeyPairSync('rsa', { modulusLength: 3072 }).privateKey],
]

describe('derToPemBuffer', () => {
  for (const [name, key] of keys) {
    it(`${name}: equals Node's own PKCS#8 and SPKI PEM`, () => {
      const pkcs8 = derToPemBuffer(key.export({ format: 'der', type: 'pkcs8' }), 'PRIVATE KEY')
      assert.ok(Buffer.isBuffer(pkcs8))
      assert.equal(pkcs8.toString('latin1'), key.export({ format: 'pem', type: 'pkcs8' }))
      assert.ok(createPrivateKey(pkcs8).equals(key), 'and parses back to the same key')
      const pub = createPublicKey(key)
      assert.equal(derToPemBuffer(pub.export({ format: 'der', type: 'spki' }), 'PUBLIC KEY').toString(), pub.export({ format: 'pem', type: 'spki' }))
    })
  }

  it('rsa: equals the PKCS#1 export; ec: equals the SEC1 export', () => {
    const rsa = keys.find(([n]) => n === 'rsa 2048')![1]
    assert.equal(derToPemBuffer(rsa.export({ format: 'der', type: 'pkcs1' }), 'RSA PRIVATE KEY').toString(), rsa.export({ format: 'pem', type: 'pkcs1' }))
    const ec = keys.find(([n]) => n === 'ec P-384')![1]
    assert.equal(derToPemBuffer(ec.export({ format: 'der', type: 'sec1' }), 'EC PRIVATE KEY').toString(), ec.export({ format: 'pem', type: 'sec1' }))
  })

  it('every length 0..200 (all padding cases, exact 64-column lines) matches the reference encoding', () => {
    for (let n = 0; n <= 200; n++) {
      const der = randomBytes(n)
      assert.equal(derToPemBuffer(der, 'TEST').toString('latin1'), referencePem(der, 'TEST'), `length ${n}`)
    }
  })

  it('encodes every byte value', () => {
    const der = Buffer.from(Array.from({ length: 256 * 3 }, (_x, i) => i % 256))
    assert.equal(derToPemBuffer(der, 'ALL').toString(), referencePem(der, 'ALL'))
    const reversed = Buffer.from(der).reverse()
    assert.equal(derToPemBuffer(reversed, 'ALL').toString(), referencePem(reversed, 'ALL'))
  })

  it('accepts a Uint8Array that is a view into a larger buffer', () => {
    const big = randomBytes(100)
    const view = new Uint8Array(big.buffer, big.byteOffset + 10, 50)
    assert.equal(derToPemBuffer(view, 'X').toString(), referencePem(Buffer.from(view), 'X'))
  })
})

describe('withPrivateKeyPem', () => {
  it('lends a valid PKCS#8 PEM and zeroes that very buffer afterwards', () => {
    const [, key] = keys[0]!
    let lent: Buffer | undefined
    const result = withPrivateKeyPem(key, (pem) => {
      lent = pem
      assert.ok(createPrivateKey(pem).equals(key))
      assert.equal(pem.toString(), key.export({ format: 'pem', type: 'pkcs8' }))
      return 'value from use'
    })
    assert.equal(result, 'value from use')
    assert.ok(lent && lent.length > 100)
    assert.ok(lent.every((b) => b === 0), 'every byte of the lent PEM is zero')
  })

  it('also wipes the DER export the PEM was made from', () => {
    const [, key] = keys[0]!
    let der: Buffer | undefined
    const spy = { export: (o: object) => (der = key.export(o as never) as Buffer) } as unknown as KeyObject
    withPrivateKeyPem(spy, (pem) => assert.ok(createPrivateKey(pem).equals(key)))
    assert.ok(der && der.length > 100)
    assert.ok(der.every((b) => b === 0), 'every byte of the DER export is zero')
  })

  it('zeroes the buffer when use throws, and rethrows', () => {
    const [, key] = keys.find(([n]) => n === 'rsa 2048')!
    let lent: Buffer | undefined
    assert.throws(() => withPrivateKeyPem(key, (pem) => {
      lent = pem
      throw new Error('createSecureContext failed')
    }), /createSecureContext failed/)
    assert.ok(lent && lent.length > 1000)
    assert.ok(lent.every((b) => b === 0))
  })
})
