import { X509Certificate, type KeyObject } from 'node:crypto'
import { issueLeaf, type IssuedX509, type X509Authority } from '../pki/x509.ts'

/** Who a bot identity certificate says its holder is. */
export interface BotClaims {
  bot: string
  /**
   * The bot's immutable id. Absent only in certificates issued before bots had ids; those
   * are judged by their instance's bot id alone.
   */
  botId?: string
  instanceId: string
  generation: number
  serial: string
  notBefore: Date
  notAfter: Date
}

const URI_PREFIX = 'memid://bot/'

/**
 * Issues the bot identity: an X.509 client certificate from the `bot` CA whose subject
 * names the bot and whose URI SAN carries the instance id and generation.
 */
export function issueBotIdentity(ca: X509Authority, publicKey: KeyObject, claims: Omit<BotClaims, 'serial' | 'notBefore' | 'notAfter'> & { botId: string }, ttlMs: number, now: number): Promise<IssuedX509> {
  return issueLeaf({
    ca,
    publicKey,
    commonName: claims.bot,
    organizations: ['memid-bot'],
    uris: [`${URI_PREFIX}${encodeURIComponent(claims.bot)}?id=${claims.botId}&instance=${claims.instanceId}&generation=${claims.generation}`],
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
  const m = /URI:memid:\/\/bot\/([^?,\s]+)\?([^,\s]+)/.exec(cert.subjectAltName ?? '')
  if (!m) return undefined
  const q = new URLSearchParams(m[2])
  const instanceId = q.get('instance') ?? ''
  const generation = q.get('generation') ?? ''
  const botId = q.get('id')
  if (!/^[0-9a-f-]{36}$/.test(instanceId) || !/^\d{1,15}$/.test(generation) || (botId !== null && !/^[0-9a-f-]{32,36}$/.test(botId))) return undefined
  let bot: string
  try {
    bot = decodeURIComponent(m[1] as string)
  } catch {
    return undefined
  }
  return {
    bot,
    ...(botId !== null ? { botId } : {}),
    instanceId,
    generation: Number(generation),
    serial: cert.serialNumber.toLowerCase(),
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
  }
}
