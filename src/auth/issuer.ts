import type { LeafKey } from '../pki/x509.ts'
import type { Bot, BotInstance, Role, Store } from '../storage/store.ts'
import type { CaSet } from './cas.ts'

/**
 * Everything an issue function needs: the authenticated bot and instance, its roles,
 * the CAs, the TTL already clamped to the bot's limit and the identity's own expiry.
 * Adding a certificate kind is one function of `(ctx, request) => response`.
 */
export interface IssueContext {
  bot: Bot
  instance: BotInstance
  roles: Role[]
  cas: CaSet
  store: Store
  /** A KeyObject for SSH certificates (any key type); a P-256 key may come as its SPKI. */
  publicKey: LeafKey
  ttlMs: number
  now: number
}
