import { randomUUID } from 'node:crypto'
import { MemidError } from '../../core/errors.ts'
import type { Authentication, Bot, BotInstance, JoinToken, PlatformJoinMethod, PlatformJoinSpec, Store } from '../../storage/store.ts'
import type { PlatformJoinRequest } from '../../api/types.ts'
import { IssuerKeys, localKeySet, type IssuerKeysOptions } from './issuer-keys.ts'
import { LEEWAY_S, replayKey, verifyJwt } from './jwt.ts'
import { checkIdentifying, matchRules, parseRule } from './rules.ts'
import { recordedClaims, type JoinMethodSpec } from './method.ts'
import { JoinRefused } from './refused.ts'
import { github } from './github.ts'
import { gitlab } from './gitlab.ts'
import { kubernetes } from './kubernetes.ts'
import { oidc } from './oidc.ts'

export const JOIN_METHODS: Readonly<Record<PlatformJoinMethod, JoinMethodSpec>> = { github, gitlab, kubernetes, oidc }

/** What `tokens add` hands over for a platform token, before checking. */
export interface PlatformTokenInput {
  allow: string[]
  issuer?: string | undefined
  audience?: string | undefined
  jwks?: string | undefined
}

/**
 * Checks a platform token's definition at `tokens add`: rules that parse and pin an
 * identity, an https issuer (the method's default or `--issuer`), a JWKS that holds
 * asymmetric keys. The audience defaults to the cluster name.
 */
export function platformSpec(method: PlatformJoinMethod, input: PlatformTokenInput, clusterName: string): PlatformJoinSpec {
  const m = JOIN_METHODS[method]
  if (input.allow.length === 0) throw new MemidError('ERR_BAD_REQUEST', `--allow: the ${method} join method needs at least one rule (KEY=VALUE[,KEY=VALUE…])`)
  const rules = input.allow.map((text, i) => {
    const at = input.allow.length > 1 ? `--allow[${i}]` : '--allow'
    const rule = parseRule(text, at)
    checkIdentifying(rule, m.identifying, at)
    return rule
  })
  const issuer = input.issuer ?? m.defaultIssuer
  if (issuer === undefined) throw new MemidError('ERR_BAD_REQUEST', `--issuer: the ${method} join method needs the issuer URL`)
  let url: URL
  try {
    url = new URL(issuer)
  } catch {
    throw new MemidError('ERR_BAD_REQUEST', '--issuer: must be an https:// URL')
  }
  if (url.protocol !== 'https:' || url.username || url.password || url.search || url.hash) throw new MemidError('ERR_BAD_REQUEST', '--issuer: must be an https:// URL without user, query or fragment')
  const audience = input.audience ?? clusterName
  if (!/^[^\s\x00-\x1f\x7f]{1,256}$/.test(audience)) throw new MemidError('ERR_BAD_REQUEST', '--audience: must be 1-256 printable characters without spaces')
  const spec: PlatformJoinSpec = { rules, issuer, audience }
  if (input.jwks !== undefined) {
    let doc: unknown
    try {
      doc = JSON.parse(input.jwks)
    } catch {
      throw new MemidError('ERR_BAD_REQUEST', '--jwks-file: is not JSON')
    }
    localKeySet(doc, '--jwks-file')
    const keys = (doc as { keys: { kty?: unknown }[] }).keys.filter((k) => ['RSA', 'EC', 'OKP'].includes(String(k?.kty)))
    if (keys.length === 0) throw new MemidError('ERR_BAD_REQUEST', '--jwks-file: holds no RSA, EC or OKP public key')
    if (keys.some((k) => 'd' in k)) throw new MemidError('ERR_BAD_REQUEST', '--jwks-file: holds a private key; give the public JWKS only')
    spec.jwks = JSON.stringify({ keys })
  }
  return spec
}

/** The agent-facing side of platform joins: verification of the JWT against a token's spec. */
export class PlatformJoins {
  readonly keys: IssuerKeys

  constructor(opts: IssuerKeysOptions) {
    this.keys = new IssuerKeys(opts)
  }

  /**
   * Verifies the request against the token: method, token expiry, the JWT (jwt.ts) and
   * the rules. Returns what the instance records and the replay key to remember.
   */
  async verify(token: JoinToken | undefined, req: PlatformJoinRequest, now: number): Promise<{ claims: Record<string, unknown>; replay: { key: string; expiresAt: string } }> {
    const spec = token?.platform
    if (token === undefined || spec === undefined) throw new MemidError('ERR_TOKEN_INVALID', `join token ${req.tokenName} does not exist or is not a platform join token`)
    if (token.joinMethod !== req.joinMethod) {
      throw new JoinRefused('ERR_JOIN_METHOD_MISMATCH', `join token ${token.name} is for the ${token.joinMethod} join method, not ${req.joinMethod}`)
    }
    if (token.expiresAt !== undefined && Date.parse(token.expiresAt) <= now) throw new MemidError('ERR_TOKEN_EXPIRED', `join token ${token.name} expired at ${token.expiresAt}`)
    const want = { issuer: spec.issuer, audience: spec.audience, now, tokenName: token.name }
    const payload = spec.jwks !== undefined
      ? await verifyJwt(req.idToken, localKeySet(JSON.parse(spec.jwks), 'the token\'s JWKS'), want)
      : await this.keys.use(spec.issuer, (getKey) => verifyJwt(req.idToken, getKey, want))
    const outcome = matchRules(spec.rules, payload)
    if (!outcome.ok) {
      throw new JoinRefused('ERR_JOIN_RULE_MISMATCH', `join token ${token.name}: claim ${outcome.claim}${outcome.got !== undefined ? ` (${JSON.stringify(outcome.got)})` : ' (absent)'} matches no --allow rule`,
        { claim: outcome.claim, ...(outcome.got !== undefined ? { got: outcome.got } : {}) })
    }
    const exp = (payload.exp as number) + LEEWAY_S
    return { claims: recordedClaims(JOIN_METHODS[token.joinMethod as PlatformJoinMethod], payload), replay: { key: replayKey(req.idToken, payload), expiresAt: new Date(exp * 1000).toISOString() } }
  }
}

/**
 * A platform join: verify, let the caller `admit` the bot (its lock check, which may refuse
 * the join before anything is written), then in one store transaction check the token and
 * bot again, refuse a replay, count the join and create the instance (with the identifying
 * claims).
 */
export async function platformJoin(
  store: Store, joins: PlatformJoins, req: PlatformJoinRequest, remoteAddr: string, now: number, admit: (bot: Bot) => Promise<void>,
): Promise<{ bot: Bot; instance: BotInstance }> {
  const token = await store.getToken(req.tokenName)
  const verified = await joins.verify(token, req, now)
  const bot = token && (await store.getBot(token.bot))
  // Once the JWT is verified, before anything is written (the caller's lock check).
  if (bot !== undefined && bot.name === token?.bot) await admit(bot)
  const time = new Date(now).toISOString()
  const instance = await store.joinWithPlatformToken(req.tokenName, { ...verified.replay, now: time }, (t) => {
    if (t === undefined) throw new MemidError('ERR_TOKEN_INVALID', `join token ${req.tokenName} was removed`)
    if (bot === undefined || bot.name !== t.bot) throw new MemidError('ERR_BOT_NOT_FOUND', `bot "${t.bot}" no longer exists`)
    const auth: Authentication = { time, joinMethod: req.joinMethod, remoteAddr, generation: 1 }
    return {
      id: randomUUID(), bot: t.bot, botId: bot.id, joinMethod: req.joinMethod, tokenName: t.name, createdAt: time,
      generation: 1, pendingGeneration: null, pendingRetries: 0,
      initialAuthentication: auth, latestAuthentications: [auth], heartbeats: [], claims: verified.claims,
    }
  })
  return { bot: bot as Bot, instance }
}
