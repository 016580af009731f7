import { it } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'

// Benchmarks are run on their own (and may be shipped to a bench machine without the test
// tree): they import src/ and bench/ only, never test fixtures or helpers.
const BENCH = path.join(import.meta.dirname, '..', '..', 'bench')

it('no benchmark imports anything under test/', () => {
  const offenders: string[] = []
  for (const name of readdirSync(BENCH).filter((n) => n.endsWith('.ts'))) {
    const text = readFileSync(path.join(BENCH, name), 'utf8')
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
      const target = path.resolve(BENCH, m[1] as string)
      if (target.startsWith(path.join(BENCH, '..', 'test') + path.sep)) offenders.push(`${name} imports ${m[1]}`)
    }
  }
  assert.deepEqual(offenders, [])
})
