// Runs every benchmark in bench/ one after another; each prints its own ratio against the real peer.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
// `npm run bench -- auth --storage postgres`: names pick benchmarks, the flags from the first `--x` on go to them.
const args = process.argv.slice(2)
const firstFlag = args.findIndex((a) => a.startsWith('--'))
const only = firstFlag === -1 ? args : args.slice(0, firstFlag)
const flags = firstFlag === -1 ? [] : args.slice(firstFlag)
const benches = readdirSync(here).filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
let failed = 0
for (const file of benches) {
  // A name that is a whole file (`agent` → agent.ts) picks that file alone, not ssh-agent.ts.
  if (only.length > 0 && !only.some((o) => (benches.includes(`${o}.ts`) ? file === `${o}.ts` : file.includes(o)))) continue
  process.stdout.write(`\n=== ${file}\n`)
  const r = spawnSync(process.execPath, [path.join(here, file), ...flags], { stdio: 'inherit' })
  if (r.status !== 0) failed++
}
process.exit(failed === 0 ? 0 : 1)
