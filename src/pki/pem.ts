import type { KeyObject } from 'node:crypto'

const ALPHABET = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')

/**
 * Wraps DER bytes as PEM *into a Buffer*, never through a JS string: strings are
 * immutable and cannot be wiped, Buffers can. Used for private keys handed to OpenSSL.
 */
export function derToPemBuffer(der: Uint8Array, label: string): Buffer {
  const head = Buffer.from(`-----BEGIN ${label}-----\n`)
  const tail = Buffer.from(`-----END ${label}-----\n`)
  const b64Len = Math.ceil(der.length / 3) * 4
  const lines = Math.ceil(b64Len / 64)
  const out = Buffer.alloc(head.length + b64Len + lines + tail.length)
  let o = head.copy(out, 0)
  let col = 0
  const put = (c: number) => {
    out[o++] = c
    if (++col === 64) {
      out[o++] = 0x0a
      col = 0
    }
  }
  for (let i = 0; i < der.length; i += 3) {
    const a = der[i] as number
    const b = i + 1 < der.length ? (der[i + 1] as number) : 0
    const c = i + 2 < der.length ? (der[i + 2] as number) : 0
    put(ALPHABET[a >> 2] as number)
    put(ALPHABET[((a & 3) << 4) | (b >> 4)] as number)
    put(i + 1 < der.length ? (ALPHABET[((b & 15) << 2) | (c >> 6)] as number) : 0x3d)
    put(i + 2 < der.length ? (ALPHABET[c & 63] as number) : 0x3d)
  }
  if (col !== 0) out[o++] = 0x0a
  o += tail.copy(out, o)
  return out.subarray(0, o)
}

/**
 * Lends a private key to `use` as a PKCS#8 PEM Buffer and wipes every byte of it (and of
 * the intermediate DER) afterwards, whatever `use` does.
 */
export function withPrivateKeyPem<T>(key: KeyObject, use: (pem: Buffer) => T): T {
  const der = key.export({ format: 'der', type: 'pkcs8' })
  const pem = derToPemBuffer(der, 'PRIVATE KEY')
  try {
    return use(pem)
  } finally {
    der.fill(0)
    pem.fill(0)
  }
}
