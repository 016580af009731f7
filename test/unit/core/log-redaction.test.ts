import { it } from 'node:test'
import assert from 'node:assert/strict'
import { createLogger, type LogFormat } from '../../../src/core/log.ts'

// The names a log field may carry a secret under, written out here rather than read from
// REDACTED_FIELDS: a test that iterates the list itself cannot notice a name removed from it.
const MUST_REDACT = [
  'key', 'privateKey', 'private_key', 'keyPem', 'token', 'joinToken', 'secret', 'password',
  'certificate', 'cert', 'certPem', 'certificates', 'authorization', 'Authorization', 'cookie',
  'signature', 'pem', 'der',
]

for (const format of ['json', 'text'] as LogFormat[]) {
  it(`every secret-bearing field name is censored at the top level and nested three deep (${format})`, () => {
    const lines: string[] = []
    const log = createLogger({ format, level: 'info', sink: { write: (l) => void lines.push(l) } })
    for (const f of MUST_REDACT) {
      log.info({ [f]: `leak-top-${f}`, a: { [f]: `leak-1-${f}`, b: { [f]: `leak-2-${f}`, c: { [f]: `leak-3-${f}` } } } }, `field ${f}`)
    }
    assert.equal(lines.length, MUST_REDACT.length)
    const leaked = MUST_REDACT.filter((f, i) => /leak-/.test(lines[i]!))
    assert.deepEqual(leaked, [], `fields written in clear: ${leaked.join(', ')}`)
    for (const [i, f] of MUST_REDACT.entries()) assert.match(lines[i]!, new RegExp(`field ${f}`), 'the line itself is kept')
  })
}
