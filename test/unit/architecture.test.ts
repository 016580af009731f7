import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'

// STYLE.md's layering: dependencies point down. A folder may import only the folders
// listed for it (and itself), plus the leaf `src/version.ts`; `cli/` sits on top and may
// import everything.
const SRC = path.join(import.meta.dirname, '..', '..', 'src')
const ALLOWED: Record<string, string[]> = {
  core: ['api'],
  api: ['core'],
  pki: ['core', 'api'],
  storage: ['core', 'api', 'pki'],
  credentials: ['core', 'api', 'pki'],
  services: ['core', 'api', 'pki', 'credentials'],
  auth: ['core', 'api', 'pki', 'storage'],
  config: ['core', 'api', 'pki', 'credentials', 'services'],
  agent: ['core', 'api', 'pki', 'credentials', 'services', 'config'],
}

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) yield* sources(p)
    else if (e.name.endsWith('.ts')) yield p
  }
}

/** Every `src/` folder a file imports from, by relative specifier. */
function importedFolders(file: string): { spec: string; folder: string }[] {
  const text = readFileSync(file, 'utf8')
  const out: { spec: string; folder: string }[] = []
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    const spec = m[1] as string
    const rel = path.relative(SRC, path.resolve(path.dirname(file), spec))
    if (rel.startsWith('..')) continue
    out.push({ spec, folder: rel.split(path.sep).length > 1 ? (rel.split(path.sep)[0] as string) : '' })
  }
  return out
}

describe('architecture', () => {
  it('imports point down: no folder imports a folder above it (services, core, storage never import agent or auth)', () => {
    const violations: string[] = []
    for (const file of sources(SRC)) {
      const rel = path.relative(SRC, file)
      const own = rel.split(path.sep).length > 1 ? (rel.split(path.sep)[0] as string) : ''
      const allowed = ALLOWED[own]
      if (allowed === undefined) continue
      for (const { spec, folder } of importedFolders(file)) {
        if (folder === own || allowed.includes(folder) || spec.endsWith('/version.ts')) continue
        violations.push(`src/${rel} imports ${spec}`)
      }
    }
    assert.deepEqual(violations, [])
  })

  it('the checker sees an upward import when there is one', () => {
    const found = importedFolders(path.join(SRC, 'agent', 'agent.ts')).map((i) => i.folder)
    assert.ok(found.includes('services') || found.includes('credentials'), `agent.ts imports ${found.join(', ')}`)
  })
})
