import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { Counter, Registry } from 'prom-client'
import { RenewalLoop, type RenewalOptions } from '../../../src/agent/renewal.ts'
import { createLogger } from '../../../src/core/log.ts'
import { FATAL_IDENTITY_CODES, MemidError, type ErrorCode } from '../../../src/core/errors.ts'

interface Harness {
  loop: RenewalLoop
  runs: number[]
  fatal: MemidError[]
  failures: unknown[]
  logs: Record<string, unknown>[]
}

/** A loop with a collecting logger; jitter off so delays are exact. */
function harness(run: (n: number) => Promise<void>, over: Partial<RenewalOptions> = {}): Harness {
  const h: Harness = { loop: undefined as unknown as RenewalLoop, runs: [], fatal: [], failures: [], logs: [] }
  const logger = createLogger({ level: 'debug', sink: { write: (l) => void h.logs.push(JSON.parse(l) as Record<string, unknown>) } })
  h.loop = new RenewalLoop({
    name: 'bot-identity',
    jitter: 0,
    backoffMinMs: 50,
    backoffMaxMs: 400,
    logger,
    run: () => {
      h.runs.push(Date.now())
      return run(h.runs.length)
    },
    onFatal: (err) => void h.fatal.push(err),
    onFailure: (err) => void h.failures.push(err),
    ...over,
  })
  return h
}

async function until(cond: () => boolean, ms = 3_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) assert.fail('condition not reached in time')
    await sleep(5)
  }
}

describe('RenewalLoop', () => {
  it('runs periodically after start() and not before; stop() ends it', async () => {
    const h = harness(async () => {}, { intervalMs: 60 })
    await sleep(100)
    assert.equal(h.runs.length, 0, 'the first credential is the caller\'s job')
    h.loop.start()
    await until(() => h.runs.length >= 4)
    h.loop.stop()
    const n = h.runs.length
    const gaps = h.runs.slice(1).map((t, i) => t - h.runs[i]!)
    for (const g of gaps) assert.ok(g >= 55, `runs are an interval apart (${gaps.join(', ')} ms)`)
    await sleep(200)
    assert.equal(h.runs.length, n, 'no run after stop')
    const st = h.loop.status()
    assert.equal(st.succeeded, n)
    assert.equal(st.failed, 0)
    assert.equal(st.nextRunAt, undefined)
    assert.ok(st.lastSuccess)
  })

  it('an interval function is asked afresh at every scheduling (renewal from the lifetime actually issued)', async () => {
    const asked: number[] = []
    const h = harness(async () => {}, { intervalMs: () => (asked.push(Date.now()), asked.length === 1 ? 300 : 40) })
    h.loop.start()
    await until(() => h.runs.length >= 3)
    h.loop.stop()
    assert.ok(asked.length >= 3, 'once per scheduling')
    assert.ok(h.runs[0]! - asked[0]! >= 280, 'the first delay is what the function said then')
    assert.ok(h.runs[2]! - h.runs[1]! < 200, 'later delays follow what it says later')
  })

  it('a failure is logged once per change of reason; the same failure again only at debug', async () => {
    const reasons = ['auth down', 'auth down', 'auth down', 'expired', 'expired']
    const h = harness(async (n) => {
      if (n <= reasons.length) throw new MemidError('ERR_AUTH_UNREACHABLE', reasons[n - 1] as string)
    })
    void h.loop.trigger()
    await until(() => h.runs.length > reasons.length, 5_000)
    h.loop.stop()
    const lines = h.logs.filter((l) => l.msg === 'renewal failed; retrying')
    assert.deepEqual(lines.filter((l) => l.level === 40).map((l) => l.reason), ['auth down', 'expired'])
    assert.equal(lines.filter((l) => l.level === 20).length, 3)
  })

  it('without an interval it runs only when triggered', async () => {
    const h = harness(async () => {})
    h.loop.start()
    await sleep(120)
    assert.equal(h.runs.length, 0)
    await h.loop.trigger()
    assert.equal(h.runs.length, 1)
    await sleep(120)
    assert.equal(h.runs.length, 1)
    h.loop.stop()
  })

  it('an interval longer than a timer can hold does not fire at once', async () => {
    // setTimeout turns delays above 2^31-1 ms (~24.8 days) into 1 ms; a 30-day interval must not spin.
    const h = harness(async () => {}, { intervalMs: 30 * 24 * 3_600_000 })
    h.loop.start()
    await sleep(150)
    assert.equal(h.runs.length, 0)
    await h.loop.trigger()
    await sleep(150)
    assert.equal(h.runs.length, 1, 'nor after a successful run')
    const next = Date.parse(h.loop.status().nextRunAt!)
    assert.ok(next - Date.now() > 20 * 24 * 3_600_000, 'the next run is still far away')
    h.loop.stop()
  })

  it('backs off exponentially on failure, capped, and records the failures', async () => {
    const h = harness(async () => {
      throw new Error('connect ECONNREFUSED 127.0.0.1:3025\n    at stack line')
    })
    await h.loop.trigger()
    await until(() => h.runs.length >= 6)
    h.loop.stop()
    const retries = h.logs.filter((l) => l.msg === 'renewal failed; retrying').map((l) => l.retryInMs)
    assert.deepEqual(retries.slice(0, 5), [50, 100, 200, 400, 400])
    const gaps = h.runs.slice(1, 6).map((t, i) => t - h.runs[i]!)
    const expected = [50, 100, 200, 400, 400]
    gaps.forEach((g, i) => assert.ok(g >= expected[i]! - 5, `gap ${i} was ${g} ms, expected about ${expected[i]}`))
    const st = h.loop.status()
    assert.ok(st.consecutiveFailures >= 6)
    assert.equal(st.failed, st.consecutiveFailures)
    assert.equal(st.succeeded, 0)
    assert.equal(st.lastError, 'connect ECONNREFUSED 127.0.0.1:3025', 'one line, no stack')
    assert.equal(h.failures.length, st.failed)
    assert.equal(h.fatal.length, 0)
  })

  it('jitter stays within the configured fraction', async () => {
    const h = harness(async () => {
      throw new Error('down')
    }, { jitter: 0.5, backoffMinMs: 100, backoffMaxMs: 100 })
    await h.loop.trigger()
    await until(() => h.runs.length >= 4)
    h.loop.stop()
    const retries = h.logs.filter((l) => l.msg === 'renewal failed; retrying').map((l) => Number(l.retryInMs))
    for (const r of retries) assert.ok(r >= 50 && r <= 150, `retry in ${r} ms`)
  })

  it('a success after failures resets the backoff and returns to the interval', async () => {
    const h = harness(async (n) => {
      if (n <= 3) throw new Error('flaky')
    }, { intervalMs: 300 })
    await h.loop.trigger()
    await until(() => h.runs.length >= 4)
    const st = h.loop.status()
    assert.equal(st.consecutiveFailures, 0)
    assert.equal(st.failed, 3)
    assert.equal(st.succeeded, 1)
    assert.equal(st.lastError, undefined)
    const next = Date.parse(st.nextRunAt!) - Date.now()
    assert.ok(next > 200 && next <= 300, `next run in ${next} ms is the interval, not a backoff`)
    h.loop.stop()
  })

  it('triggers during a run coalesce into exactly one more run', async () => {
    let inFlight = 0
    let maxInFlight = 0
    const h = harness(async () => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      await sleep(80)
      inFlight--
    })
    const first = h.loop.trigger()
    const during = [h.loop.trigger(), h.loop.trigger(), h.loop.trigger(), h.loop.trigger()]
    assert.ok(during.every((p) => p === first), 'a trigger during a run waits for that run')
    await first
    await until(() => h.runs.length === 2 && inFlight === 0)
    await sleep(150)
    assert.equal(h.runs.length, 2)
    assert.equal(maxInFlight, 1, 'runs never overlap')
    h.loop.stop()
  })

  for (const code of FATAL_IDENTITY_CODES) {
    it(`${code} stops the loop and calls onFatal once`, async () => {
      const h = harness(async () => {
        await sleep(30)
        throw new MemidError(code as ErrorCode, 'bot instance is locked: compromised')
      }, { intervalMs: 60 })
      h.loop.start()
      await until(() => h.runs.length === 1)
      h.loop.trigger()
      h.loop.trigger()
      await until(() => h.fatal.length === 1)
      await sleep(150)
      assert.equal(h.runs.length, 1, 'no retry, no queued run, no periodic run')
      assert.equal(h.fatal.length, 1)
      assert.equal(h.fatal[0]!.code, code)
      await h.loop.trigger()
      assert.equal(h.runs.length, 1, 'trigger after a fatal answer does nothing')
      assert.ok(h.logs.some((l) => l.msg === 'renewal refused for good' && l.code === code))
    })
  }

  it('a non-fatal MemidError is retried', async () => {
    const h = harness(async () => {
      throw new MemidError('ERR_AUTH_UNREACHABLE', 'auth down')
    })
    await h.loop.trigger()
    await until(() => h.runs.length >= 3)
    h.loop.stop()
    assert.equal(h.fatal.length, 0)
  })

  it('stop during a run schedules nothing afterwards', async () => {
    const h = harness(async () => {
      await sleep(50)
    }, { intervalMs: 60 })
    const p = h.loop.trigger()
    h.loop.stop()
    await p
    await sleep(200)
    assert.equal(h.runs.length, 1)
    assert.equal(h.loop.status().nextRunAt, undefined)
  })

  it('counts results in the renewals metric', async () => {
    const registry = new Registry()
    const renewals = new Counter({ name: 'memid_test_renewals_total', help: 'x', labelNames: ['credential', 'result'] as const, registers: [registry] })
    const h = harness(async (n) => {
      if (n === 2) throw new Error('once')
    }, { renewals })
    await h.loop.trigger()
    await h.loop.trigger()
    await h.loop.trigger()
    h.loop.stop()
    const values = (await renewals.get()).values.map((v) => [v.labels.credential, v.labels.result, v.value])
    assert.deepEqual(values.sort(), [['bot-identity', 'failure', 1], ['bot-identity', 'success', 2]])
  })
})
