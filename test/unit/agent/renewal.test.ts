import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Counter, Registry } from 'prom-client'
import { RenewalLoop, type RenewalOptions } from '../../../src/agent/renewal.ts'
import { createLogger } from '../../../src/core/log.ts'
import { FATAL_IDENTITY_CODES, MemidError, type ErrorCode } from '../../../src/core/errors.ts'
import { ManualClock, settle } from '../../helpers/manual-clock.ts'

interface Harness {
  loop: RenewalLoop
  clock: ManualClock
  /** Clock time of each run's start. */
  runs: number[]
  fatal: MemidError[]
  failures: unknown[]
  logs: Record<string, unknown>[]
}

/** A loop on a manual clock with a collecting logger; jitter off so delays are exact. */
function harness(run: (n: number, commit: () => void) => Promise<void>, over: Partial<RenewalOptions> = {}): Harness {
  const clock = new ManualClock()
  const h: Harness = { loop: undefined as unknown as RenewalLoop, clock, runs: [], fatal: [], failures: [], logs: [] }
  const logger = createLogger({ level: 'debug', sink: { write: (l) => void h.logs.push(JSON.parse(l) as Record<string, unknown>) } })
  h.loop = new RenewalLoop({
    name: 'bot-identity',
    jitter: 0,
    backoffMinMs: 50,
    backoffMaxMs: 400,
    logger,
    clock,
    run: (commit) => {
      h.runs.push(clock.now())
      return run(h.runs.length, commit)
    },
    onFatal: (err) => void h.fatal.push(err),
    onFailure: (err) => void h.failures.push(err),
    ...over,
  })
  return h
}

/** A promise the test resolves: a run that stays in flight until the test says so. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => (resolve = r))
  return { promise, resolve }
}

const gaps = (runs: number[]) => runs.slice(1).map((t, i) => t - runs[i]!)

describe('RenewalLoop', () => {
  it('runs periodically after start() and not before; stop() ends it', async () => {
    const h = harness(async () => {}, { intervalMs: 60 })
    await h.clock.advance(1_000)
    assert.equal(h.runs.length, 0, 'the first credential is the caller\'s job')
    h.loop.start()
    await h.clock.advance(240)
    assert.deepEqual(gaps(h.runs), [60, 60, 60], 'runs are an interval apart')
    assert.equal(h.runs.length, 4)
    h.loop.stop()
    assert.equal(h.clock.pending, 0, 'stop() clears the timer')
    await h.clock.advance(1_000)
    assert.equal(h.runs.length, 4, 'no run after stop')
    const st = h.loop.status()
    assert.equal(st.succeeded, 4)
    assert.equal(st.failed, 0)
    assert.equal(st.nextRunAt, undefined)
    assert.equal(st.lastSuccess, new Date(h.runs[3]!).toISOString(), 'times come from the injected clock')
  })

  it('an interval function is asked afresh at every scheduling (renewal from the lifetime actually issued)', async () => {
    const asked: number[] = []
    const h = harness(async () => {}, { intervalMs: () => (asked.push(h.clock.now()), asked.length === 1 ? 300 : 60) })
    h.loop.start()
    await h.clock.advance(299)
    assert.equal(h.runs.length, 0, 'the first delay is what the function said then')
    await h.clock.advance(1)
    assert.equal(h.runs.length, 1)
    await h.clock.advance(120)
    assert.equal(h.runs.length, 3, 'later delays follow what it says later')
    h.loop.stop()
    assert.ok(asked.length >= 3, 'once per scheduling')
    assert.deepEqual(gaps(h.runs), [60, 60])
  })

  it('a failure is logged once per change of reason; the same failure again only at debug', async () => {
    const reasons = ['auth down', 'auth down', 'auth down', 'expired', 'expired']
    const h = harness(async (n) => {
      if (n <= reasons.length) throw new MemidError('ERR_AUTH_UNREACHABLE', reasons[n - 1] as string)
    })
    void h.loop.trigger()
    // Backoff 50, 100, 200, 400, 400 ms after each failure.
    await h.clock.advance(2_000)
    assert.ok(h.runs.length > reasons.length, `ran ${h.runs.length} times`)
    h.loop.stop()
    const lines = h.logs.filter((l) => l.msg === 'renewal failed; retrying')
    assert.deepEqual(lines.filter((l) => l.level === 40).map((l) => l.reason), ['auth down', 'expired'])
    assert.equal(lines.filter((l) => l.level === 20).length, 3)
  })

  it('without an interval it runs only when triggered', async () => {
    const h = harness(async () => {})
    h.loop.start()
    await h.clock.advance(3_600_000)
    assert.equal(h.runs.length, 0)
    await h.loop.trigger()
    assert.equal(h.runs.length, 1)
    await h.clock.advance(3_600_000)
    assert.equal(h.runs.length, 1)
    assert.equal(h.loop.status().nextRunAt, undefined)
    h.loop.stop()
  })

  it('an interval longer than a timer can hold does not fire at once', async () => {
    // setTimeout turns delays above 2^31-1 ms (~24.8 days) into 1 ms (the manual clock too); a 30-day interval must not spin.
    const h = harness(async () => {}, { intervalMs: 30 * 24 * 3_600_000 })
    h.loop.start()
    await h.clock.advance(1_000)
    assert.equal(h.runs.length, 0)
    await h.loop.trigger()
    await h.clock.advance(1_000)
    assert.equal(h.runs.length, 1, 'nor after a successful run')
    const next = Date.parse(h.loop.status().nextRunAt!)
    assert.equal(next - h.clock.now(), 2 ** 31 - 1 - 1_000, 'the next run is capped at the longest timer, still far away')
    h.loop.stop()
  })

  it('backs off exponentially on failure, capped, and records the failures', async () => {
    const h = harness(async () => {
      throw new Error('connect ECONNREFUSED 127.0.0.1:3025\n    at stack line')
    })
    await h.loop.trigger()
    await h.clock.advance(50 + 100 + 200 + 400 + 400)
    h.loop.stop()
    const retries = h.logs.filter((l) => l.msg === 'renewal failed; retrying').map((l) => l.retryInMs)
    assert.deepEqual(retries, [50, 100, 200, 400, 400, 400])
    assert.deepEqual(gaps(h.runs), [50, 100, 200, 400, 400])
    const st = h.loop.status()
    assert.equal(st.consecutiveFailures, 6)
    assert.equal(st.failed, 6)
    assert.equal(st.succeeded, 0)
    assert.equal(st.lastError, 'connect ECONNREFUSED 127.0.0.1:3025', 'one line, no stack')
    assert.equal(st.lastFailure, new Date(h.runs[5]!).toISOString())
    assert.equal(h.failures.length, 6)
    assert.equal(h.fatal.length, 0)
  })

  it('jitter stays within the configured fraction, drawn from the clock', async () => {
    for (const [random, expected] of [[0, 50], [0.5, 100], [0.999, 150]] as const) {
      const h = harness(async () => {
        throw new Error('down')
      }, { jitter: 0.5, backoffMinMs: 100, backoffMaxMs: 100 })
      h.clock.nextRandom = random
      await h.loop.trigger()
      h.loop.stop()
      const retries = h.logs.filter((l) => l.msg === 'renewal failed; retrying').map((l) => Number(l.retryInMs))
      assert.deepEqual(retries, [expected], `random ${random}`)
    }
  })

  it('a jittered interval never drops below 50 ms', async () => {
    const h = harness(async () => {}, { intervalMs: 10, jitter: 0.5 })
    h.clock.nextRandom = 0
    h.loop.start()
    assert.equal(h.clock.nextDelay(), 50)
    h.loop.stop()
  })

  it('a success after failures resets the backoff and returns to the interval', async () => {
    const h = harness(async (n) => {
      if (n <= 3) throw new Error('flaky')
    }, { intervalMs: 300 })
    await h.loop.trigger()
    await h.clock.advance(50 + 100 + 200)
    assert.equal(h.runs.length, 4)
    const st = h.loop.status()
    assert.equal(st.consecutiveFailures, 0)
    assert.equal(st.failed, 3)
    assert.equal(st.succeeded, 1)
    assert.equal(st.lastError, undefined)
    assert.equal(Date.parse(st.nextRunAt!) - h.clock.now(), 300, 'next run is the interval, not a backoff')
    h.loop.stop()
  })

  it('triggers during a run coalesce into exactly one more run', async () => {
    let inFlight = 0
    let maxInFlight = 0
    const gates: ReturnType<typeof deferred>[] = []
    const h = harness(async () => {
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      const gate = deferred()
      gates.push(gate)
      await gate.promise
      inFlight--
    })
    const first = h.loop.trigger()
    const during = [h.loop.trigger(), h.loop.trigger(), h.loop.trigger(), h.loop.trigger()]
    assert.ok(during.every((p) => p === first), 'a trigger during a run waits for that run')
    gates[0]!.resolve()
    await first
    await settle()
    assert.equal(h.runs.length, 2, 'one queued run starts after the first')
    gates[1]!.resolve()
    await h.clock.advance(10_000)
    assert.equal(h.runs.length, 2)
    assert.equal(maxInFlight, 1, 'runs never overlap')
    h.loop.stop()
  })

  for (const code of FATAL_IDENTITY_CODES) {
    it(`${code} stops the loop and calls onFatal once`, async () => {
      const gate = deferred()
      const h = harness(async () => {
        await gate.promise
        throw new MemidError(code as ErrorCode, 'bot instance is locked: compromised')
      }, { intervalMs: 60 })
      h.loop.start()
      await h.clock.advance(60)
      assert.equal(h.runs.length, 1)
      void h.loop.trigger()
      void h.loop.trigger()
      gate.resolve()
      await h.clock.advance(1_000)
      assert.equal(h.runs.length, 1, 'no retry, no queued run, no periodic run')
      assert.equal(h.fatal.length, 1)
      assert.equal(h.fatal[0]!.code, code)
      assert.equal(h.clock.pending, 0)
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
    await h.clock.advance(150)
    h.loop.stop()
    assert.equal(h.runs.length, 3)
    assert.equal(h.fatal.length, 0)
  })

  it('stop during a run schedules nothing afterwards', async () => {
    const gate = deferred()
    const h = harness(() => gate.promise, { intervalMs: 60 })
    const p = h.loop.trigger()
    h.loop.stop()
    gate.resolve()
    await p
    await h.clock.advance(1_000)
    assert.equal(h.runs.length, 1)
    assert.equal(h.loop.status().nextRunAt, undefined)
    assert.equal(h.clock.pending, 0)
  })

  it('a run that commits is counted in the same step its result becomes visible, before its follow-up work ends', async () => {
    // The agent publishes a new identity and then heartbeats and renews services; a status
    // read in between must not see the new generation next to the old success count.
    let visible = 0
    const followUp = deferred()
    const h = harness(async (n, commit) => {
      commit()
      visible = n
      await followUp.promise
    }, { intervalMs: 5_000 })
    const p = h.loop.trigger()
    await settle()
    assert.equal(visible, 1)
    const st = h.loop.status()
    assert.equal(st.succeeded, 1, 'counted as soon as it is visible')
    assert.ok(st.nextRunAt, 'and the next run is already scheduled')
    followUp.resolve()
    await p
    assert.equal(h.loop.status().succeeded, 1, 'not counted twice')
    h.loop.stop()
  })

  it('an error after commit is logged, not counted as a failure or retried', async () => {
    const h = harness(async (_n, commit) => {
      commit()
      throw new Error('heartbeat lost')
    }, { intervalMs: 5_000 })
    await h.loop.trigger()
    const st = h.loop.status()
    assert.equal(st.succeeded, 1)
    assert.equal(st.failed, 0)
    assert.equal(Date.parse(st.nextRunAt!) - h.clock.now(), 5_000)
    assert.ok(h.logs.some((l) => l.msg === 'after renewal' && l.reason === 'heartbeat lost'))
    h.loop.stop()
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
