import { createHash } from 'node:crypto'
import { decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import { MemidError, type ErrorCode } from '../../core/errors.ts'
import { JoinRefused } from './refused.ts'

/** Asymmetric algorithms only: an HMAC "key" would be the issuer's public key, known to anyone. */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA', 'Ed25519']
export const LEEWAY_S = 30
export const MAX_LIFETIME_S = 3600
/** A platform JWT is a few KiB; anything far larger is not one. */
export const MAX_JWT_CHARS = 16_384

export interface JwtExpectations {
  issuer: string
  audience: string
  now: number
  /** Names the token in every message. */
  tokenName: string
}

/**
 * Verifies a platform JWT with jose: signature (asymmetric only) against `getKey`, `iss`
 * and `aud` exactly, `exp`/`nbf`/`iat` with 30 s leeway, and a lifetime of at most 1 h.
 * Every refusal is a MemidError with its own code; the JWT itself never appears in one.
 */
export async function verifyJwt(jwt: string, getKey: JWTVerifyGetKey, want: JwtExpectations): Promise<JWTPayload> {
  const refuse = (code: ErrorCode, why: string, claim?: string, got?: string) =>
    new JoinRefused(code, `join token ${want.tokenName}: ${why}`, { ...(claim ? { claim } : {}), ...(got !== undefined ? { got } : {}) })
  let alg: string | undefined
  try {
    alg = decodeProtectedHeader(jwt).alg
  } catch {
    throw refuse('ERR_JOIN_JWT_INVALID', 'the ID token is not a JWT')
  }
  let payload: JWTPayload
  try {
    ({ payload } = await jwtVerify(jwt, getKey, {
      issuer: want.issuer, audience: want.audience, algorithms: JWT_ALGORITHMS, clockTolerance: LEEWAY_S,
      currentDate: new Date(want.now), requiredClaims: ['exp'],
    }))
  } catch (err) {
    if (err instanceof MemidError) throw err
    const [code, why, claim] = describeJose(err, alg, want)
    const got = claim && err instanceof errors.JWTClaimValidationFailed ? JSON.stringify(err.payload[claim])?.slice(0, 256) : undefined
    throw refuse(code, why, claim, got)
  }
  const nowS = want.now / 1000
  const exp = payload.exp as number
  if (payload.iat !== undefined && payload.iat > nowS + LEEWAY_S) throw refuse('ERR_JOIN_JWT_NOT_YET_VALID', `the JWT was issued in the future (iat ${iso(payload.iat)})`, 'iat')
  const start = payload.iat ?? payload.nbf
  if (start === undefined) throw refuse('ERR_JOIN_JWT_INVALID', 'the JWT has neither iat nor nbf, so its lifetime is unknown')
  if (exp - start > MAX_LIFETIME_S) throw refuse('ERR_JOIN_JWT_LIFETIME', `the JWT is valid for ${Math.round(exp - start)}s, more than the ${MAX_LIFETIME_S}s allowed`, 'exp')
  return payload
}

function describeJose(err: unknown, alg: string | undefined, want: JwtExpectations): [ErrorCode, string, string?] {
  if (err instanceof errors.JWTExpired) return ['ERR_JOIN_JWT_EXPIRED', `the JWT expired at ${iso(Number(err.payload.exp))}`, 'exp']
  if (err instanceof errors.JWTClaimValidationFailed) {
    const got = JSON.stringify(err.payload[err.claim])?.slice(0, 200) ?? 'nothing'
    if (err.claim === 'iss') return ['ERR_JOIN_WRONG_ISSUER', `the JWT's issuer is ${got}, expected "${want.issuer}"`, 'iss']
    if (err.claim === 'aud') return ['ERR_JOIN_WRONG_AUDIENCE', `the JWT's audience is ${got}, expected "${want.audience}"`, 'aud']
    if (err.claim === 'nbf') return ['ERR_JOIN_JWT_NOT_YET_VALID', `the JWT is not valid before ${iso(Number(err.payload.nbf))}`, 'nbf']
    return ['ERR_JOIN_JWT_INVALID', `the JWT's "${err.claim}" claim is invalid (${err.reason})`, err.claim]
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return ['ERR_JOIN_JWT_INVALID', `algorithm ${JSON.stringify(alg ?? null)} is not allowed (only ${JWT_ALGORITHMS.join(', ')})`]
  if (err instanceof errors.JWKSNoMatchingKey) return ['ERR_JOIN_JWT_INVALID', "no key of the issuer's JWKS matches the JWT's kid and algorithm"]
  if (err instanceof errors.JWSSignatureVerificationFailed) return ['ERR_JOIN_JWT_INVALID', 'the JWT signature does not verify']
  return ['ERR_JOIN_JWT_INVALID', `the ID token is not a valid JWT (${(err as { code?: string }).code ?? 'malformed'})`]
}

/**
 * What the replay cache remembers of a JWT: its `jti` (scoped to the issuer) or, without
 * one, a hash of the whole token. Never the token.
 */
export function replayKey(jwt: string, payload: JWTPayload): string {
  const h = createHash('sha256')
  if (typeof payload.jti === 'string' && payload.jti !== '') return `jti:${h.update(`${payload.iss}\0${payload.jti}`).digest('hex')}`
  return `jwt:${h.update(jwt).digest('hex')}`
}

function iso(seconds: number): string {
  return Number.isFinite(seconds) ? new Date(seconds * 1000).toISOString() : String(seconds)
}
