const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy

/**
 * Parses durations written like `90s`, `20m`, `1h`, `1h30m`, `720h` into milliseconds.
 * Returns undefined for anything else so callers can name the offending key.
 */
export function parseDuration(text: string): number | undefined {
  if (typeof text !== 'string' || text.length === 0 || text.length > 32) return undefined
  PART.lastIndex = 0
  let total = 0
  let consumed = 0
  for (let m = PART.exec(text); m !== null; m = PART.exec(text)) {
    total += Number(m[1]) * (UNITS[m[2] as string] as number)
    consumed = PART.lastIndex
  }
  if (consumed !== text.length || !Number.isFinite(total)) return undefined
  return Math.round(total)
}

/** Formats milliseconds the way they are written in config: `1h20m`, `45s`, `250ms`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`
  let rest = Math.round(ms / 1000)
  const h = Math.floor(rest / 3600)
  rest -= h * 3600
  const m = Math.floor(rest / 60)
  const s = rest - m * 60
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s || (!h && !m) ? `${s}s` : ''}`
}
