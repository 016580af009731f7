import { describe, it, mock } from 'node:test'
import assert from 'node:assert/strict'

// gc.ts takes `globalThis.gc` when it loads (memid start runs node --expose-gc); this
// file's own process gets a counting stand-in first.
let collections = 0
;(globalThis as { gc?: () => void }).gc = () => void collections++
mock.timers.enable({ apis: ['setTimeout', 'Date'] })
const { collectAfterRenewal, loadMallocTrim } = await import('../../../src/core/gc.ts')

describe('collectAfterRenewal', () => {
  it('one renewal (identity, then three service certificates) is one collection, two seconds after the last change', () => {
    collections = 0
    for (let i = 0; i < 4; i++) {
      collectAfterRenewal()
      mock.timers.tick(500)
    }
    assert.equal(collections, 0, 'not while credentials are still changing')
    mock.timers.tick(1_500)
    assert.equal(collections, 1)
    mock.timers.tick(60_000)
    assert.equal(collections, 1, 'nothing more without a renewal')
  })

  it('renewals that never pause still get a collection every ten seconds', () => {
    collections = 0
    for (let i = 0; i < 40; i++) {
      collectAfterRenewal()
      mock.timers.tick(1_000)
    }
    assert.equal(collections, 4)
  })
})

describe('loadMallocTrim', () => {
  it('is undefined when the addon is not built, so the agent runs as before', () => {
    assert.equal(loadMallocTrim('/nonexistent/malloc-trim.node'), undefined)
  })

  it('the built addon hands free C heap pages back (malloc_trim: a boolean)', { skip: loadMallocTrim() === undefined ? 'native/build/malloc-trim.node is not built (npm run build:native)' : false }, () => {
    const trim = loadMallocTrim() as () => boolean
    assert.equal(typeof trim(), 'boolean')
  })
})
