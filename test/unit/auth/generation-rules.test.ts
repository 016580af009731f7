import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { decideRenewal, decideRequest } from '../../../src/auth/generation.ts'
import type { BotInstance } from '../../../src/storage/store.ts'

// The generation state machine as pure functions, decision by decision (the service-level
// behaviour is in generation.test.ts; these run in milliseconds under a mutation run).
const settled = (generation: number): BotInstance => ({
  id: 'i', bot: 'b', botId: 'x', joinMethod: 'token', tokenName: 't', createdAt: '', generation, pendingGeneration: null, pendingRetries: 0,
  initialAuthentication: {} as BotInstance['initialAuthentication'], latestAuthentications: [], heartbeats: [],
})
const pending = (generation: number, pendingKey?: string, pendingRetries = 0): BotInstance => ({
  ...settled(generation), pendingGeneration: generation + 1, pendingRetries, ...(pendingKey !== undefined ? { pendingKey } : {}),
})

describe('generation decisions', () => {
  it('settled n, request with n: accepted unchanged', () => {
    const inst = settled(5)
    assert.deepEqual(decideRequest(inst, 5), { kind: 'accept', instance: inst })
  })

  it('a copy names the generation expected: n when settled, "n or n+1" while one is pending', () => {
    assert.deepEqual(decideRequest(settled(5), 4), { kind: 'copy', expected: '5' })
    assert.deepEqual(decideRequest(settled(5), 6), { kind: 'copy', expected: '5' })
    assert.deepEqual(decideRequest(pending(5, 'k'), 4), { kind: 'copy', expected: '5 or 6' })
    assert.deepEqual(decideRenewal(pending(5, 'k'), 4, 'k'), { kind: 'copy', expected: '5 or 6' })
    assert.deepEqual(decideRenewal(settled(5), 4, 'k'), { kind: 'copy', expected: '5' })
  })

  it('pending n+1: n is still accepted and stays pending; n+1 confirms it and forgets the key', () => {
    const inst = pending(5, 'k', 2)
    assert.deepEqual(decideRequest(inst, 5), { kind: 'accept', instance: inst })
    const d = decideRequest(inst, 6)
    assert.equal(d.kind, 'accept')
    assert.deepEqual(d.kind === 'accept' && d.instance, { ...settled(6) })
    assert.ok(d.kind === 'accept' && !('pendingKey' in d.instance))
  })

  it('settled n, renewal: n+1 pending for this key, not a retry', () => {
    assert.deepEqual(decideRenewal(settled(5), 5, 'k1'), { kind: 'renew', generation: 6, retry: false, instance: pending(5, 'k1') })
  })

  it('pending n+1, renewal from n with the same key: the same generation again, a retry, counted', () => {
    assert.deepEqual(decideRenewal(pending(5, 'k1', 2), 5, 'k1'), { kind: 'renew', generation: 6, retry: true, instance: pending(5, 'k1', 3) })
  })

  it('pending n+1, renewal from n with another key: a copy naming the renewal in flight', () => {
    assert.deepEqual(decideRenewal(pending(5, 'k1'), 5, 'k2'), { kind: 'copy', expected: '6, or 5 with the key of the renewal in flight' })
  })

  it('a pending generation from before keys were bound is bound by its first retry', () => {
    assert.deepEqual(decideRenewal(pending(5), 5, 'k2'), { kind: 'renew', generation: 6, retry: true, instance: pending(5, 'k2', 1) })
  })

  it('pending n+1, renewal from n+1: confirms it and moves on to n+2', () => {
    assert.deepEqual(decideRenewal(pending(5, 'k1', 1), 6, 'k2'), { kind: 'renew', generation: 7, retry: false, instance: pending(6, 'k2') })
  })
})
