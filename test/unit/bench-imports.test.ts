import { it } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'

// Benchmarks measure memid against native peers, never against the test servers: they
// import src/ and bench/, and at most test/helpers/ (typed-client shortcuts that start no
// server), never test/fixtures/ (issue 9: "benchmarks do not import test fixtures").
const BENCH = path.join(import.meta.dirname, '..', '..', 'bench')

it('no benchmark imports a test fixture (test/fixtures/)', () => {
  const offenders: string[] = []
  for (const name of readdirSync(BENCH).filter((n) => n.endsWith('.ts'))) {
    const text = readFileSync(path.join(BENCH, name), 'utf8')
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
      const target = path.resolve(BENCH, m[1] as string)
      if (target.startsWith(path.join(BENCH, '..', 'test', 'fixtures') + path.sep)) offenders.push(`${name} imports ${m[1]}`)
    }
  }
  assert.deepEqual(offenders, [])
})
