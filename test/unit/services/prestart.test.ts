import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { availableParallelism } from 'node:os'
import { prestartsThread } from '../../../src/cli/main.ts'
import { prestartDataPlane, releasePrestarted, takePrestarted } from '../../../src/services/prestart.ts'

const argv = (...args: string[]) => ['node', 'memid', ...args]

describe('the first data-plane thread started before the CLI loads', () => {
  it('is started for memid start on more than one CPU, not for --workers 1 nor for other commands', () => {
    assert.equal(prestartsThread(argv('start', '--auth-server', 'a:1')), availableParallelism() > 1)
    assert.equal(prestartsThread(argv('start', '--workers', '1')), false)
    assert.equal(prestartsThread(argv('start', '--workers=1')), false)
    assert.equal(prestartsThread(argv('dev')), false)
    assert.equal(prestartsThread(argv('status')), false)
  })

  it('is handed once to the group that takes it, running', async () => {
    prestartDataPlane()
    const w = takePrestarted('debug')
    assert.ok(w !== undefined)
    assert.equal(takePrestarted('debug'), undefined, 'a second group starts its own')
    const exited = new Promise<number>((r) => w.once('exit', r))
    await w.terminate()
    assert.equal(typeof (await exited), 'number')
  })

  it('is ended when no group takes it (the agent runs no worker threads)', async () => {
    prestartDataPlane()
    releasePrestarted()
    assert.equal(takePrestarted('info'), undefined)
  })
})
