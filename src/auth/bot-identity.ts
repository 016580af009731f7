import { children, readTlv, TAG, type Tlv } from '../pki/der.ts'
import { certExtensions, issueLeaf, tbsParts, type IssuedX509, type LeafKey, type X509Authority } from '../pki/x509.ts'

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
export function issueBotIdentity(ca: X509Authority, publicKey: LeafKey, claims: Omit<BotClaims, 'serial' | 'notBefore' | 'notAfter'> & { botId: string }, ttlMs: number, now: number): Promise<IssuedX509> {
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

/**
 * Reads the claims back from a verified certificate (DER); undefined when it carries none.
 * The DER is walked here rather than through `X509Certificate`: every new connection of an
 * agent reads its peer's claims, and OpenSSL's parse plus the text forms of the SAN and the
 * validity (printed, then parsed back) were ~0.1 ms of the ~0.5 ms a request costs.
 */
export function readBotClaims(der: Buffer): BotClaims | undefined {
  let fields: CertFields | undefined
  try {
    fields = certFields(der)
  } catch {
    return undefined
  }
  const m = fields && /^memid:\/\/bot\/([^?,\s]+)\?([^,\s]+)/.exec(fields.uri)
  if (!fields || !m) return undefined
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
    serial: fields.serial,
    notBefore: fields.notBefore,
    notAfter: fields.notAfter,
  }
}

interface CertFields {
  /** The first URI of the subjectAltName that names a memid bot. */
  uri: string
  /** Lower-case hex of the serial's bytes, as `X509Certificate.serialNumber` gives them. */
  serial: string
  notBefore: Date
  notAfter: Date
}

/** subjectAltName's OID, encoded (2.5.29.17). */
const OID_SAN = Buffer.from('0603551d11', 'hex')

/** The fields the claims come from; undefined without a memid URI. Throws on malformed DER. */
function certFields(der: Buffer): CertFields | undefined {
  const cert = readTlv(der, 0)
  if (cert.tag !== TAG.SEQUENCE || cert.end !== der.length) return undefined
  const tbs = readTlv(der, cert.body, cert.end)
  if (tbs.tag !== TAG.SEQUENCE) return undefined
  const { serial, validity, extensions } = tbsParts(der, tbs)
  if (serial?.tag !== TAG.INTEGER || validity?.tag !== TAG.SEQUENCE) return undefined
  const [notBefore, notAfter] = children(der, validity).map((t) => derTime(der, t))
  if (notBefore === undefined || notAfter === undefined) return undefined
  if (extensions === undefined) return undefined
  let uri: string | undefined
  for (const { id, value } of certExtensions(der, extensions)) {
    if (value.tag !== TAG.OCTET_STRING || !id.equals(OID_SAN)) continue
    for (const name of children(der, readTlv(der, value.body, value.end))) {
      // uniformResourceIdentifier [6] IA5String
      const text = name.tag === 0x86 ? der.toString('latin1', name.body, name.end) : ''
      if (text.startsWith(URI_PREFIX)) {
        uri = text
        break
      }
    }
    break
  }
  if (uri === undefined) return undefined
  let s = serial.body
  while (s < serial.end - 1 && der[s] === 0) s++
  return { uri, serial: der.toString('hex', s, serial.end), notBefore, notAfter }
}

/** UTCTime (YYMMDDHHMMSSZ, years 1950–2049) or GeneralizedTime (YYYYMMDDHHMMSSZ). */
function derTime(der: Buffer, t: Tlv): Date | undefined {
  const s = der.toString('latin1', t.body, t.end)
  const m = t.tag === TAG.UTC_TIME ? /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s)
    : t.tag === TAG.GENERALIZED_TIME ? /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s) : null
  if (!m) return undefined
  let year = Number(m[1])
  if (t.tag === TAG.UTC_TIME) year += year < 50 ? 2000 : 1900
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])))
}
