import { readFileSync } from 'node:fs'
import https from 'node:https'
import { MemidError } from '../core/errors.ts'
import { missingGithubEnv, type IdTokenSource, type Onboarding, type PlatformJoinMethod, type TokenSource } from '../config/agent.ts'
import type { PlatformJoinRequest, TokenJoinRequest } from '../api/types.ts'
import type { AuthClient } from './auth-client.ts'

const ID_TOKEN_TIMEOUT_MS = 10_000
const MAX_ID_TOKEN_BYTES = 64 * 1024

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

/** What a join sends besides the key and TTL the bot identity adds. */
export type JoinProof = Omit<TokenJoinRequest, 'publicKey' | 'ttl'> | Omit<PlatformJoinRequest, 'publicKey' | 'ttl'>

/**
 * The join request for an onboarding method, minus the key and TTL the bot identity adds.
 * Called at join time, after the whole config was resolved: reading a token consumes
 * nothing, but it is the first step that touches a secret. A platform join asks the auth
 * service which audience to request, then gets a fresh JWT from its platform; the JWT
 * lives only in the returned object, which the caller sends and drops.
 */
export async function joinCredentials(onboarding: Onboarding, env: NodeJS.ProcessEnv, client: AuthClient): Promise<JoinProof> {
  if (onboarding.method === 'token') return { joinMethod: 'token', token: await readToken(onboarding.token, env) }
  const info = await client.joinTokenInfo(onboarding.tokenName)
  if (info.joinMethod !== onboarding.method) {
    throw new MemidError('ERR_JOIN_METHOD_MISMATCH', `--join-token ${onboarding.tokenName} is a ${info.joinMethod} join token, not ${onboarding.method}`)
  }
  const idToken = await readIdToken(onboarding.method, onboarding.idToken, info.audience, env)
  return { joinMethod: onboarding.method, tokenName: onboarding.tokenName, idToken }
}

async function readIdToken(method: PlatformJoinMethod, src: IdTokenSource, audience: string, env: NodeJS.ProcessEnv): Promise<string> {
  let value: string
  if (src.kind === 'github') value = await githubIdToken(audience, env)
  else if (src.kind === 'env') value = env.MEMID_ID_TOKEN ?? ''
  else {
    try {
      value = readFileSync(src.path, 'utf8')
    } catch (err) {
      const hint = method === 'kubernetes' ? ' (mount a projected service-account token there: serviceAccountToken with path memid)' : ''
      throw new MemidError('ERR_JOIN_ENV_MISSING', `--id-token-file: cannot read ${src.path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}${hint}`)
    }
  }
  value = value.trim()
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value)) {
    const from = src.kind === 'github' ? 'the GitHub Actions token endpoint' : src.kind === 'env' ? '$MEMID_ID_TOKEN' : src.path
    throw new MemidError('ERR_JOIN_ENV_MISSING', `--join-method ${method}: what ${from} holds is not a JWT`)
  }
  return value
}

/** Asks the runner's token endpoint for a JWT with this audience (`permissions: id-token: write`). */
function githubIdToken(audience: string, env: NodeJS.ProcessEnv): Promise<string> {
  missingGithubEnv(env)
  const fail = (why: string) => new MemidError('ERR_JOIN_ENV_MISSING', `--join-method github: cannot get the job's ID token: ${why}`)
  let url: URL
  try {
    url = new URL(env.ACTIONS_ID_TOKEN_REQUEST_URL as string)
  } catch {
    return Promise.reject(fail('ACTIONS_ID_TOKEN_REQUEST_URL is not a URL'))
  }
  url.searchParams.set('audience', audience)
  return new Promise((resolve, reject) => {
    const req = https.get(url, { timeout: ID_TOKEN_TIMEOUT_MS, headers: { authorization: `Bearer ${env.ACTIONS_ID_TOKEN_REQUEST_TOKEN}`, accept: 'application/json' } }, (res) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > MAX_ID_TOKEN_BYTES) req.destroy(new Error('answer too large'))
        else chunks.push(c)
      })
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(fail(`${url.origin} answered ${res.statusCode}`))
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { value?: unknown }
          if (typeof body.value !== 'string') return reject(fail('the answer has no "value"'))
          resolve(body.value)
        } catch {
          reject(fail('the answer is not JSON'))
        }
      })
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', (err: NodeJS.ErrnoException) => reject(fail(`${url.origin}: ${err.code ?? err.message}`)))
  })
}
