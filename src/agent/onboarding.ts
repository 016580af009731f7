import { readFileSync } from 'node:fs'
import { MemidError } from '../core/errors.ts'
import type { Onboarding, TokenSource } from '../config/agent.ts'
import type { JoinRequest } from '../api/types.ts'

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    process.stdin.on('data', (c: Buffer) => {
      size += c.length
      if (size > 4096) {
        reject(new MemidError('ERR_USAGE', '--token-file -: more than 4 KiB on stdin; expected one token'))
        process.stdin.destroy()
        return
      }
      chunks.push(c)
    })
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

/** Reads the join token from its source; the value never reaches a log or an error. */
export async function readToken(src: TokenSource, env: NodeJS.ProcessEnv): Promise<string> {
  let value: string
  if (src.kind === 'file') {
    try {
      value = readFileSync(src.path, 'utf8')
    } catch (err) {
      throw new MemidError('ERR_USAGE', `--token-file: cannot read ${src.path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
    }
  } else if (src.kind === 'stdin') {
    value = await readStdin()
  } else if (src.kind === 'env') {
    value = env.MEMID_TOKEN ?? ''
  } else {
    value = src.value
  }
  value = value.trim()
  if (value === '' || value.includes('\n')) throw new MemidError('ERR_USAGE', 'the join token is empty or spans several lines')
  return value
}

/**
 * The join request for an onboarding method, minus the key and TTL the bot identity adds.
 * Called at join time, after the whole config was resolved: reading a token consumes
 * nothing, but it is the first step that touches a secret.
 */
export async function joinCredentials(onboarding: Onboarding, env: NodeJS.ProcessEnv): Promise<Pick<JoinRequest, 'joinMethod' | 'token'>> {
  return { joinMethod: 'token', token: await readToken(onboarding.token, env) }
}
