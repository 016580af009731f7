import type { KeyObject } from 'node:crypto'
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
  publicKey: KeyObject
  ttlMs: number
  now: number
}
