import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { formatDuration, parseDuration } from '../../../src/core/duration.ts'

describe('parseDuration', () => {
  it('reads the forms config uses', () => {
    const cases: [string, number][] = [
      ['250ms', 250], ['90s', 90_000], ['20m', 1_200_000], ['1h', 3_600_000], ['720h', 2_592_000_000],
      ['1d', 86_400_000], ['1h30m', 5_400_000], ['1m30s500ms', 90_500], ['1.5h', 5_400_000], ['0s', 0],
    ]
    for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text)
  })

  it('rejects garbage instead of guessing', () => {
    const bad = [
      '', '1x', '-1s', '+1s', '1', 's', 'h1', '1 h', ' 1s', '1s ', '1h 30m', '1.s', '.5s', '1e3s', '1S', '1H',
      '0x10s', 'NaN', 'Infinitys', '1s\n', '1s;rm', '9'.repeat(40) + 's', '1s'.repeat(17),
    ]
    for (const text of bad) assert.equal(parseDuration(text), undefined, JSON.stringify(text))
  })

  it('rejects non-strings from untyped callers', () => {
    assert.equal(parseDuration(5 as unknown as string), undefined)
    assert.equal(parseDuration(undefined as unknown as string), undefined)
  })

  it('is not confused by state left from a previous call', () => {
    // The regexp is sticky and shared; a failed parse must not leak lastIndex into the next.
    assert.equal(parseDuration('1h1x'), undefined)
    assert.equal(parseDuration('5s'), 5_000)
  })
})

describe('formatDuration', () => {
  it('writes durations the way config reads them', () => {
    const cases: [number, string][] = [
      [0, '0ms'], [1, '1ms'], [999, '999ms'], [1_000, '1s'], [45_000, '45s'], [60_000, '1m'], [90_000, '1m30s'],
      [3_600_000, '1h'], [4_800_000, '1h20m'], [3_661_000, '1h1m1s'], [2_592_000_000, '720h'],
    ]
    for (const [ms, text] of cases) assert.equal(formatDuration(ms), text, String(ms))
  })

  it('never writes a negative duration', () => {
    assert.equal(formatDuration(-5), '0ms')
  })

  it('round-trips whole seconds through parseDuration', () => {
    for (const ms of [1_000, 59_000, 61_000, 3_599_000, 3_600_000, 86_399_000, 90_061_000]) {
      assert.equal(parseDuration(formatDuration(ms)), ms, String(ms))
    }
  })
})
