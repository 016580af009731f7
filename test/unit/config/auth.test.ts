import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import path from 'node:path'
import { ensureDataDir, loadAuthConfig, resolveDataDir } from '../../../src/config/auth.ts'
import { readYamlFile } from '../../../src/core/yaml.ts'
import { MemidError } from '../../../src/core/errors.ts'

let dir: string
let n = 0
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-auth-config-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

function yamlFile(text: string): string {
  const p = path.join(dir, `auth-${++n}.yaml`)
  writeFileSync(p, text)
  return p
}

function refused(fn: () => unknown, startsWith: string, includes?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MemidError, String(err))
    assert.equal(err.code, 'ERR_CONFIG')
    assert.ok(err.message.startsWith(startsWith), `"${err.message}" should start with "${startsWith}"`)
    if (includes) assert.match(err.message, includes)
    return true
  })
}

/** Runs with MEMID_DATA_DIR set (or unset) and restores it. */
function withDataDirEnv<T>(value: string | undefined, fn: () => T): T {
  const old = process.env.MEMID_DATA_DIR
  if (value === undefined) delete process.env.MEMID_DATA_DIR
  else process.env.MEMID_DATA_DIR = value
  try {
    return fn()
  } finally {
    if (old === undefined) delete process.env.MEMID_DATA_DIR
    else process.env.MEMID_DATA_DIR = old
  }
}

describe('loadAuthConfig', () => {
  it('defaults follow SPEC.md', () => {
    const cfg = withDataDirEnv(undefined, () => loadAuthConfig({}))
    assert.deepEqual(cfg, {
      dataDir: path.resolve('memid-data'),
      listen: '127.0.0.1:3025',
      storage: `sqlite:${path.resolve('memid-data', 'memid.db')}`,
      clusterName: 'memid',
      logFormat: 'json',
      workers: Math.max(1, availableParallelism()),
    })
  })

  it('$MEMID_DATA_DIR sets the data dir and the default store path; --data-dir wins', () => {
    const envDir = path.join(dir, 'from-env')
    const a = withDataDirEnv(envDir, () => loadAuthConfig({}))
    assert.equal(a.dataDir, envDir)
    assert.equal(a.storage, `sqlite:${path.join(envDir, 'memid.db')}`)
    const b = withDataDirEnv(envDir, () => loadAuthConfig({ dataDir: 'relative/dir' }))
    assert.equal(b.dataDir, path.resolve('relative/dir'), 'relative paths are made absolute')
  })

  it('parses examples/auth.yaml', () => {
    const file = new URL('../../../examples/auth.yaml', import.meta.url).pathname
    assert.deepEqual(loadAuthConfig({ config: file }), {
      dataDir: '/var/lib/memid', listen: '0.0.0.0:3025', storage: 'sqlite:/var/lib/memid/memid.db', clusterName: 'prod', logFormat: 'json',
      workers: Math.max(1, availableParallelism()),
    })
  })

  it('flags override the file', () => {
    const file = yamlFile('version: v1\ndata_dir: /var/lib/memid\nlisten: 0.0.0.0:3025\nstorage: sqlite:/a.db\ncluster_name: prod\nlog_format: json\n')
    const cfg = loadAuthConfig({
      config: file, dataDir: path.join(dir, 'd'), listen: '127.0.0.1:0', storage: 'sqlite::memory:', clusterName: 'dev', logFormat: 'text',
    })
    assert.deepEqual(cfg, { dataDir: path.join(dir, 'd'), listen: '127.0.0.1:0', storage: 'sqlite::memory:', clusterName: 'dev', logFormat: 'text', workers: 1 })
  })

  it('the default store follows a data dir given in the file', () => {
    const cfg = loadAuthConfig({ config: yamlFile('version: v1\ndata_dir: /srv/memid\n') })
    assert.equal(cfg.storage, 'sqlite:/srv/memid/memid.db')
  })

  it('unknown keys are refused, naming them', () => {
    refused(() => loadAuthConfig({ config: yamlFile('version: v1\ndatadir: /x\n') }), 'unknown key "datadir"')
  })

  it('wrong types are refused with the key path', () => {
    refused(() => loadAuthConfig({ config: yamlFile('version: v1\nlisten: 3025\n') }), 'listen: ')
    refused(() => loadAuthConfig({ config: yamlFile('version: v1\nlog_format: xml\n') }), 'log_format: ')
    refused(() => loadAuthConfig({ config: yamlFile('version: v1\ncluster_name: "bad name"\n') }), 'cluster_name: ')
    refused(() => loadAuthConfig({ config: yamlFile('version: v2\n') }), 'version: ')
    refused(() => loadAuthConfig({ config: yamlFile('') }), 'version: ')
  })

  it('bad flag values are refused with the flag or key', () => {
    refused(() => loadAuthConfig({ logFormat: 'xml' }), '--log-format: ')
    refused(() => loadAuthConfig({ clusterName: '../etc' }), 'cluster_name: ')
  })
})

describe('readYamlFile', () => {
  it('an empty file is an empty object', () => {
    assert.deepEqual(readYamlFile(yamlFile('')), {})
  })

  it('a missing file names --config and the errno, not a stack', () => {
    refused(() => readYamlFile(path.join(dir, 'nope.yaml')), '--config: cannot read ', /ENOENT/)
  })

  it('malformed YAML names the file, on one line', () => {
    const file = yamlFile('a: [1,\nb: }\n')
    assert.throws(() => readYamlFile(file), (err: unknown) => {
      assert.ok(err instanceof MemidError && err.code === 'ERR_CONFIG')
      assert.ok(err.message.startsWith(`${file}: not valid YAML`), err.message)
      assert.doesNotMatch(err.message, /\n/)
      return true
    })
  })

  it('reads what it was given, nothing else', () => {
    const file = yamlFile('version: v1\nlisten: 127.0.0.1:1\n')
    assert.deepEqual(readYamlFile(file), { version: 'v1', listen: '127.0.0.1:1' })
    assert.equal(readFileSync(file, 'utf8'), 'version: v1\nlisten: 127.0.0.1:1\n')
  })
})

describe('ensureDataDir', () => {
  it('creates the data dir 0700, parents included', () => {
    const d = path.join(dir, 'new', 'data')
    ensureDataDir(d)
    assert.equal(statSync(d).mode & 0o777, 0o700)
  })

  it('tightens an existing data dir we own', () => {
    const d = path.join(dir, 'loose')
    mkdirSync(d)
    chmodSync(d, 0o755)
    ensureDataDir(d)
    assert.equal(statSync(d).mode & 0o777, 0o700)
  })
})

describe('resolveDataDir', () => {
  it('makes the flag absolute', () => {
    assert.equal(resolveDataDir('/abs'), '/abs')
    assert.equal(withDataDirEnv(undefined, () => resolveDataDir()), path.resolve('memid-data'))
  })
})

describe('auth config: workers', () => {
  it('--workers over workers:, default one per CPU, and one for an in-memory store', () => {
    const dataDir = path.join(dir, 'w')
    assert.equal(loadAuthConfig({ dataDir }).workers, Math.max(1, availableParallelism()))
    assert.equal(loadAuthConfig({ dataDir, storage: 'sqlite::memory:' }).workers, 1)
    const file = yamlFile('version: v1\nworkers: 3\n')
    assert.equal(loadAuthConfig({ dataDir, config: file }).workers, 3)
    assert.equal(loadAuthConfig({ dataDir, config: file, workers: '1' }).workers, 1)
  })

  it('refuses a bad count, and several workers on one in-memory store', () => {
    const dataDir = path.join(dir, 'w')
    for (const bad of ['0', '-1', '1.5', 'two', '257', '']) refused(() => loadAuthConfig({ dataDir, workers: bad }), '--workers: must be a whole number')
    refused(() => loadAuthConfig({ dataDir, config: yamlFile('version: v1\nworkers: 0\n') }), '', /workers/)
    refused(() => loadAuthConfig({ dataDir, storage: 'sqlite::memory:', workers: '2' }), '--workers: an in-memory store')
  })
})
