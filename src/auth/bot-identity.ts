import { X509Certificate, type KeyObject } from 'node:crypto'
import { issueLeaf, type IssuedX509, type X509Authority } from '../pki/x509.ts'

/** Who a bot identity certificate says its holder is. */
export interface BotClaims {
  bot: string
  instanceId: string
  generation: number
  serial: string
  notAfter: Date
}

const URI_PREFIX = 'memid://bot/'

/**
 * Issues the bot identity: an X.509 client certificate from the `bot` CA whose subject
 * names the bot and whose URI SAN carries the instance id and generation.
 */
export function issueBotIdentity(ca: X509Authority, publicKey: KeyObject, claims: Omit<BotClaims, 'serial' | 'notAfter'>, ttlMs: number, now: number): Promise<IssuedX509> {
  return issueLeaf({
    ca,
    publicKey,
    commonName: claims.bot,
    organizations: ['memid-bot'],
    uris: [`${URI_PREFIX}${encodeURIComponent(claims.bot)}?instance=${claims.instanceId}&generation=${claims.generation}`],
    ttlMs,
    usage: 'client',
    now,
  })
}

/** Reads the claims back from a verified certificate (DER); undefined when it carries none. */
export function readBotClaims(der: Buffer): BotClaims | undefined {
  let cert: X509Certificate
  try {
    cert = new X509Certificate(der)
  } catch {
    return undefined
  }
  const san = cert.subjectAltName ?? ''
  const m = /URI:memid:\/\/bot\/([^?,\s]+)\?instance=([0-9a-f-]{36})&generation=(\d{1,15})/.exec(san)
  if (!m) return undefined
  return {
    bot: decodeURIComponent(m[1] as string),
    instanceId: m[2] as string,
    generation: Number(m[3]),
    serial: cert.serialNumber.toLowerCase(),
    notAfter: new Date(cert.validTo),
  }
}
