import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { coreSizeLimit, inspectorFlag } from '../../../src/core/harden.ts'

describe('process hardening helpers', () => {
  it('reads the core-size limit from /proc/<pid>/limits text', () => {
    const text = 'Limit                     Soft Limit           Hard Limit           Units     \nMax core file size        0                    unlimited            bytes     \n'
    assert.deepEqual(coreSizeLimit(text), { soft: '0', hard: 'unlimited' })
    assert.equal(coreSizeLimit('nothing here'), undefined)
  })

  it('finds every inspector-opening flag in NODE_OPTIONS or execArgv, and nothing else', () => {
    for (const opt of ['--inspect', '--inspect=127.0.0.1:0', '--max-old-space-size=64 --inspect-brk', '--inspect-wait=9999', '--inspect-brk-node']) {
      assert.equal(inspectorFlag(opt, [])?.where, 'NODE_OPTIONS', opt)
    }
    assert.equal(inspectorFlag(undefined, ['--inspect=0'])?.flag, '--inspect')
    for (const opt of ['--inspect-port=0', '--inspect-publish-uid=http', '--no-warnings', '', '--enable-source-maps']) {
      assert.equal(inspectorFlag(opt, ['--disable-sigusr1']), undefined, opt)
    }
  })
})
