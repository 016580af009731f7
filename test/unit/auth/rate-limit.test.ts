import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { RateLimiter } from '../../../src/auth/rate-limit.ts'

function takeN(l: RateLimiter, key: string, n: number, now: number): number {
  let ok = 0
  for (let i = 0; i < n; i++) if (l.take(key, now)) ok++
  return ok
}

describe('RateLimiter', () => {
  it('allows a burst, then refuses', () => {
    const l = new RateLimiter(1, 5)
    assert.equal(takeN(l, '10.0.0.1', 5, 1_000), 5)
    assert.equal(l.take('10.0.0.1', 1_000), false)
    assert.equal(l.take('10.0.0.1', 1_000), false)
  })

  it('refills at the rate per second, never above the burst', () => {
    const l = new RateLimiter(2, 4)
    assert.equal(takeN(l, 'a', 4, 0), 4)
    assert.equal(l.take('a', 500), true, 'one token after 0.5 s at 2/s')
    assert.equal(l.take('a', 500), false)
    assert.equal(takeN(l, 'a', 10, 1_500), 2, 'two more after another second')
    assert.equal(takeN(l, 'a', 10, 3_600_000), 4, 'a long pause refills to the burst, not beyond')
  })

  it('keys are independent', () => {
    const l = new RateLimiter(1, 2)
    assert.equal(takeN(l, 'a', 3, 0), 2)
    assert.equal(takeN(l, 'b', 3, 0), 2)
    assert.equal(l.take('a', 0), false)
  })

  it('fractional rates work', () => {
    const l = new RateLimiter(0.5, 1)
    assert.equal(l.take('k', 0), true)
    assert.equal(l.take('k', 1_000), false)
    assert.equal(l.take('k', 2_000), true)
  })

  it('a clock stepped back does not lock a client out', () => {
    const l = new RateLimiter(1, 3)
    assert.equal(takeN(l, 'k', 1, 10_000_000), 1)
    // Wall clock corrected by an hour: the bucket must not go deep into debt.
    assert.equal(l.take('k', 10_000_000 - 3_600_000), true)
    assert.equal(l.take('k', 10_000_000 - 3_600_000 + 1_000), true)
  })

  it('stays usable with many distinct clients', () => {
    const l = new RateLimiter(10, 1)
    for (let i = 0; i < 12_000; i++) assert.equal(l.take(`c${i}`, i), true)
    assert.equal(l.take('c11999', 11_999), false)
    assert.equal(l.take('c0', 12_000), true, 'a swept client starts with a full bucket')
  })
})
