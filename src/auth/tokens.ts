import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'

/**
 * Join tokens are `<name>.<secret>`: the name is public (listed, recorded on instances,
 * audited), the secret carries 256 bits of randomness and is stored only as a SHA-256 hash.
 */
export interface NewToken {
  name: string
  value: string
  secretHash: string
}

export function generateToken(): NewToken {
  const name = `tok-${randomBytes(6).toString('hex')}`
  const secret = randomBytes(32).toString('base64url')
  return { name, value: `${name}.${secret}`, secretHash: hashSecret(secret) }
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex')
}

/** Splits a presented token; undefined when it cannot be one of ours. */
export function splitToken(value: string): { name: string; secret: string } | undefined {
  const m = /^(tok-[0-9a-f]{12})\.([A-Za-z0-9_-]{43})$/.exec(value.trim())
  return m ? { name: m[1] as string, secret: m[2] as string } : undefined
}

/** Compares a presented secret against the stored hash in constant time. */
export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex')
  const b = Buffer.from(storedHash, 'hex')
  return a.length === b.length && timingSafeEqual(a, b)
}
