import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { AuthClient, type CallerIdentity } from '../../src/agent/auth-client.ts'
import type { IdentityResponse } from '../../src/api/types.ts'
import { buildClientContext } from '../../src/pki/tls-context.ts'

/** A bot identity held by a test, as an agent would hold it. */
export interface TestIdentity {
  key: KeyObject
  res: IdentityResponse
  caller: CallerIdentity
}

export function newKey(): { key: KeyObject; publicKey: string } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return { key: privateKey, publicKey: createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }) as string }
}

export function asCaller(client: AuthClient, key: KeyObject, res: IdentityResponse): TestIdentity {
  return { key, res, caller: { agent: client.identityAgent(buildClientContext({ key, certPem: res.certificate, caPem: client.cas.tls })) } }
}

export async function join(client: AuthClient, token: string, ttl = '1h'): Promise<TestIdentity> {
  const k = newKey()
  const res = await client.join({ joinMethod: 'token', token, publicKey: k.publicKey, ttl })
  return asCaller(client, k.key, res)
}

export async function renew(client: AuthClient, id: TestIdentity, ttl = '1h'): Promise<TestIdentity> {
  const k = newKey()
  const res = await client.renew(id.caller, { publicKey: k.publicKey, ttl })
  return asCaller(client, k.key, res)
}

export async function heartbeat(client: AuthClient, id: TestIdentity): Promise<void> {
  await client.heartbeat(id.caller, { hostname: 'test', version: '0', os: 'linux', arch: 'x64', uptimeSeconds: 1, services: [] })
}

export async function client(auth: { addr: string; caPin: string }): Promise<AuthClient> {
  const c = new AuthClient({ server: auth.addr, caPins: [auth.caPin] })
  await c.bootstrap()
  return c
}
