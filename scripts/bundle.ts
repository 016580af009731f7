/**
 * Bundles the files that start a thread (the CLI, the data-plane worker and its service
 * thread modules, the auth service's API worker) over tsc's output in dist/, so that a
 * thread loads a few files instead of hundreds: `npm run build` runs tsc, then this.
 *
 * Why: loading ~300 ES modules (resolve, stat, read, compile and link each) was about half
 * of `memid start`'s CPU to ready, paid again in every data-plane worker thread
 * (bench/agent.ts). The rest of dist/ stays tsc's one file per module, so the library API
 * (dist/index.js) and its types are unchanged, and a library user who starts an agent gets
 * the bundled worker threads too.
 *
 * - Code splitting within each kind of thread: a module shared by several entries lives
 *   once, in a chunk, so a thread never holds two copies of a class (`instanceof
 *   MemidError` keeps working across the data-plane worker and a service's thread module),
 *   and every `import()` stays lazy (a chunk loaded on first use).
 * - zod, pino and commander are bundled (their own module graphs were most of the files);
 *   what memid loads lazily or through `createRequire` (`@peculiar/x509`, `pg`, `jose`,
 *   `yaml`, prom-client's class files) stays external and is loaded from node_modules as before.
 * - `import.meta.url` in a source file is replaced by the URL that file has in tsc's
 *   layout (dist/<path>.js), computed from where the bundle runs: the worker, thread-module,
 *   native addon and `createRequire` paths built from it resolve as they do unbundled.
 * - Not minified: stack traces and `memid` errors stay readable.
 */
import { build, type Plugin } from 'esbuild'
import { readFile, rm } from 'node:fs/promises'
import path from 'node:path'

const root = path.resolve(import.meta.dirname, '..')
const src = path.join(root, 'src')
const dist = path.join(root, 'dist')

/**
 * Each is written over tsc's output of the same path. One build per kind of thread: a
 * thread loads only its own build's files, and splitting over fewer entries makes fewer,
 * larger chunks (each file a thread loads costs a resolve, a package.json scope lookup and
 * a module record).
 */
const BUILDS = [
  ['cli/main.ts', 'cli/program.ts'],
  ['services/data-plane-worker.ts', 'services/kube-proxy/thread.ts', 'services/db-tunnel/thread.ts'],
  ['auth/api-worker.ts'],
]

/** Loaded lazily or through createRequire at run time; bundling them would load them eagerly or twice. */
const EXTERNAL = ['@peculiar/x509', 'reflect-metadata', 'pg', 'jose', 'yaml', 'prom-client']

const CHUNKS = 'chunks'

/**
 * Every output file (entry or chunk, at any depth) finds dist/ from its own URL; the last
 * `/dist/` is the package's even when a parent directory has the same name.
 * `require` is for the CommonJS packages bundled into ES modules (pino and commander
 * require node's own modules); made on first call, since most files never call it and
 * `createRequire` costs a package.json lookup.
 */
const BANNER = [
  "import { createRequire as __memidCreateRequire } from 'node:module';",
  'let __memidRequire;',
  'const require = (id) => (__memidRequire ??= __memidCreateRequire(import.meta.url))(id);',
  "const __memidDist = import.meta.url.slice(0, import.meta.url.lastIndexOf('/dist/') + 6);",
].join('\n')

/** `import.meta.url` of src/a/b.ts becomes the URL of dist/a/b.js. */
const metaUrl: Plugin = {
  name: 'memid-import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8')
      if (!args.path.startsWith(src + path.sep) || !text.includes('import.meta.url')) return { contents: text, loader: 'ts' }
      const rel = path.relative(src, args.path).split(path.sep).join('/').replace(/\.ts$/, '.js')
      return { contents: text.replaceAll('import.meta.url', `(__memidDist + ${JSON.stringify(rel)})`), loader: 'ts' }
    })
  },
}

/**
 * zod's English messages only. `zod` re-exports every locale as a namespace (`z.locales`),
 * which a bundler must keep whole: 49 languages, 369 KB of the 758 KB chunk that the CLI
 * and every data-plane thread parse at start. memid sets no locale (zod's default is
 * English, imported by its schemas directly), so the namespace is reduced to `en`.
 */
const zodEnglishOnly: Plugin = {
  name: 'memid-zod-english-only',
  setup(b) {
    const zod = `${path.sep}node_modules${path.sep}zod${path.sep}`
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      args.importer.includes(zod) ? { path: path.join(path.dirname(args.importer), '..', 'locales', 'index.js'), namespace: 'memid-zod-locales' } : undefined)
    b.onLoad({ filter: /.*/, namespace: 'memid-zod-locales' }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(path.join(path.dirname(args.path), 'en.js'))}`,
      resolveDir: path.dirname(args.path),
      loader: 'js',
    }))
  },
}

await rm(path.join(dist, CHUNKS), { recursive: true, force: true })
let files = 0
for (const entries of BUILDS) {
  const result = await build({
    absWorkingDir: root,
    entryPoints: entries.map((e) => path.join(src, e)),
    outbase: src,
    outdir: dist,
    entryNames: '[dir]/[name]',
    chunkNames: `${CHUNKS}/[name]-[hash]`,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node22',
    external: EXTERNAL,
    banner: { js: BANNER },
    plugins: [metaUrl, zodEnglishOnly],
    logLevel: 'warning',
    metafile: true,
  })
  files += Object.keys(result.metafile.outputs).length
}
const entryCount = BUILDS.flat().length
console.log(`bundled ${entryCount} entries into dist/ (${files - entryCount} shared chunks in dist/${CHUNKS}/)`)
