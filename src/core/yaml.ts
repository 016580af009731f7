import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import type * as Yaml from 'yaml'
import { ConfigError } from './errors.ts'

let yaml: typeof Yaml | undefined
/**
 * The `yaml` package, loaded on first use rather than at start: under Node it is 72
 * CommonJS modules (~50 ms of CPU), and most runs (an agent started with flags, a CLI
 * command printing text or JSON) never need it.
 */
export const loadYaml = (): typeof Yaml => (yaml ??= createRequire(import.meta.url)('yaml') as typeof Yaml)

/** Reads a YAML config file into a plain value; a missing or malformed file is a ConfigError. */
export function readYamlFile(file: string): unknown {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`--config: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
  try {
    return loadYaml().parse(text, { maxAliasCount: 10 }) ?? {}
  } catch (err) {
    throw new ConfigError(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
}
