import type { BotInstance } from '../storage/store.ts'

/**
 * The generation state machine of a bot instance (README: "Renewal and generations"), as
 * pure functions of the stored instance and what the request presents. The auth service
 * runs them inside the store's transaction, so the decision and its effects commit together.
 *
 * An instance has a confirmed generation n (the one its agent has been seen using) and at
 * most one pending generation n+1, issued but not yet used, bound to the public key it was
 * issued for. Using n+1 confirms it.
 */
export type Decision =
  /** Heartbeat or certificate request accepted; `instance` is what to write back. */
  | { kind: 'accept'; instance: BotInstance }
  /** Renewal granted: issue `generation` for the request's key; `retry` when it was already issued once. */
  | { kind: 'renew'; instance: BotInstance; generation: number; retry: boolean }
  /** The presented identity cannot be the agent's: a copy. Lock, audit, refuse. */
  | { kind: 'copy'; expected: string }

/** Presenting the pending generation confirms it: the agent has switched to it. */
function confirmed(inst: BotInstance, presented: number): BotInstance {
  if (inst.pendingGeneration === null || presented !== inst.pendingGeneration) return inst
  const { pendingKey: _key, ...rest } = inst
  return { ...rest, generation: presented, pendingGeneration: null, pendingRetries: 0 }
}

function copy(inst: BotInstance): Decision {
  return { kind: 'copy', expected: inst.pendingGeneration === null ? String(inst.generation) : `${inst.generation} or ${inst.pendingGeneration}` }
}

/**
 * A heartbeat or a certificate request under generation `presented`: the confirmed or the
 * pending one is accepted (an agent keeps using n until its renewal answer arrives);
 * anything else is a copy.
 */
export function decideRequest(inst: BotInstance, presented: number): Decision {
  const cur = confirmed(inst, presented)
  return presented === cur.generation ? { kind: 'accept', instance: cur } : copy(inst)
}

/**
 * A renewal under generation `presented` for the new key `keyId` (sha256 of its SPKI, hex).
 * With nothing pending, the confirmed generation moves to a pending next one bound to the
 * key. While one is pending, the confirmed generation asking again with the same key gets
 * the same pending generation (its answer was lost: idempotent, any number of times); with
 * another key it is a copy, as is any older generation.
 */
export function decideRenewal(inst: BotInstance, presented: number, keyId: string): Decision {
  const cur = confirmed(inst, presented)
  if (presented !== cur.generation) return copy(inst)
  if (cur.pendingGeneration === null) {
    const next = cur.generation + 1
    return { kind: 'renew', generation: next, retry: false, instance: { ...cur, pendingGeneration: next, pendingRetries: 0, pendingKey: keyId } }
  }
  // A pending generation from before renewals were bound to keys (no pendingKey) is bound
  // by its first retry.
  if (cur.pendingKey !== undefined && cur.pendingKey !== keyId) {
    return { kind: 'copy', expected: `${cur.pendingGeneration}, or ${cur.generation} with the key of the renewal in flight` }
  }
  return {
    kind: 'renew', generation: cur.pendingGeneration, retry: true,
    instance: { ...cur, pendingRetries: cur.pendingRetries + 1, pendingKey: keyId },
  }
}
