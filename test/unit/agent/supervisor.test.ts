import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Supervisor, type Supervised } from '../../../src/agent/supervisor.ts'

/** A unit whose start finishes when the test says so; records starts and stops in `events`. */
function unit(name: string, events: string[]): Supervised & { finish(err?: Error): void } {
  let finish!: (err?: Error) => void
  const started = new Promise<void>((resolve, reject) => (finish = (err) => (err ? reject(err) : resolve())))
  return {
    name,
    finish: (err) => finish(err),
    async start() {
      events.push(`start ${name}`)
      await started
    },
    async stop() {
      events.push(`stop ${name}`)
    },
  }
}

describe('Supervisor.startAll', () => {
  it('starts every unit before any has finished starting: the slowest sets the time, not the sum', async () => {
    const events: string[] = []
    const [a, b] = [unit('a', events), unit('b', events)]
    const sup = new Supervisor()
    const all = sup.startAll([Promise.resolve(a), Promise.resolve(b)])
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(events, ['start a', 'start b'])
    b.finish()
    a.finish()
    await all
    assert.deepEqual(sup.started.map((u) => u.name), ['a', 'b'])
  })

  it('stops in the reverse of the given order, whatever order the units came up in', async () => {
    const events: string[] = []
    const [a, b, c] = [unit('a', events), unit('b', events), unit('c', events)]
    const sup = new Supervisor()
    const all = sup.startAll([a, b, c].map((u) => Promise.resolve(u)))
    c.finish()
    await new Promise((r) => setImmediate(r))
    b.finish()
    await new Promise((r) => setImmediate(r))
    a.finish()
    await all
    events.length = 0
    await sup.stop(0)
    assert.deepEqual(events, ['stop c', 'stop b', 'stop a'])
  })

  it('throws the first failure in the given order once all settled, and stops the units that did start', async () => {
    const events: string[] = []
    const [a, b, c] = [unit('a', events), unit('b', events), unit('c', events)]
    const sup = new Supervisor()
    const all = sup.startAll([Promise.resolve(a), Promise.resolve(b), Promise.resolve(c), Promise.reject(new Error('d was not built'))])
    c.finish(new Error('c failed'))
    b.finish(new Error('b failed'))
    a.finish()
    await assert.rejects(all, /^Error: b failed$/)
    assert.deepEqual(sup.started.map((u) => u.name), ['a'])
    events.length = 0
    await sup.stop(0)
    assert.deepEqual(events, ['stop a'])
  })
})
