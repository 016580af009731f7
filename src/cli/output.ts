import { loadYaml } from '../core/yaml.ts'
import { MemidError } from '../core/errors.ts'

export type Format = 'text' | 'json' | 'yaml'

export function parseFormat(value: string | undefined, allowed: Format[] = ['text', 'json', 'yaml']): Format {
  const f = (value ?? 'text') as Format
  if (!allowed.includes(f)) throw new MemidError('ERR_USAGE', `--format: must be one of ${allowed.join(', ')}`)
  return f
}

/** A readable table like tctl's: a header, a rule, aligned columns. */
export function table(headers: string[], rows: (string | number | undefined)[][]): string {
  const cells = rows.map((r) => r.map((c) => (c === undefined || c === '' ? '-' : String(c))))
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd()
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n') + '\n'
}

/** Writes `value` as JSON or YAML, or calls `text` for the human form. */
export function emit(format: Format, value: unknown, text: () => string): void {
  if (format === 'json') process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
  else if (format === 'yaml') process.stdout.write(loadYaml().stringify(value))
  else process.stdout.write(text())
}

export function list(values: string[]): string {
  return values.length ? values.join(',') : '-'
}
