import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { IssuerKeys, KID_REFRESH_MS } from '../../../src/auth/join/issuer-keys.ts'
import { verifyJwt } from '../../../src/auth/join/jwt.ts'
import { MemidError } from '../../../src/core/errors.ts'
import { silentLogger } from '../../../src/core/log.ts'
import { TestIssuer } from '../../fixtures/oidc-issuer.ts'

/** A clock the test moves; JWTs are minted against the real time, so it starts there. */
function manualClock() {
  let offset = 0
  return { now: () => Date.now() + offset, advance: (ms: number) => (offset += ms) }
}

describe('issuer keys: discovery, cache, refresh on an unknown kid', () => {
  let issuer: TestIssuer
  before(async () => {
    issuer = await TestIssuer.start()
  })
  after(async () => {
    await issuer?.stop()
  })

  const claims = () => ({ sub: 'x', aud: 'memid' })
  function verifier(clock: { now(): number }) {
    const keys = new IssuerKeys({ clock, log: silentLogger(), ca: issuer.caPem })
    return {
      keys,
      verify: (jwt: string) => keys.use(issuer.url, (getKey) => verifyJwt(jwt, getKey, { issuer: issuer.url, audience: 'memid', now: Date.now(), tokenName: 't' })),
    }
  }

  test('an unknown kid is refreshed for at most once a minute, counted from the last fetch; the rotated key then verifies', async () => {
    const clock = manualClock()
    const { verify } = verifier(clock)
    issuer.cacheControl = 'max-age=3600'
    const start = issuer.jwksFetches
    await verify(await issuer.mint(claims()))
    assert.equal(issuer.jwksFetches, start + 1, 'first use fetches')
    const next = await issuer.addKey('ES256', { publish: false })
    const rotated = await issuer.mint(claims(), { key: next })
    await assert.rejects(verify(rotated), (e: unknown) => e instanceof MemidError && e.code === 'ERR_JOIN_JWT_INVALID' && /no key of the issuer's JWKS/.test(e.message))
    assert.equal(issuer.jwksFetches, start + 1, 'no refresh within a minute of the last fetch')
    issuer.publish(next)
    clock.advance(KID_REFRESH_MS - 1000)
    await assert.rejects(verify(rotated))
    assert.equal(issuer.jwksFetches, start + 1, 'still inside the minute')
    clock.advance(1000)
    await verify(rotated)
    assert.equal(issuer.jwksFetches, start + 2, 'one refresh, then the rotated key verifies')
    const stranger = await issuer.addKey('ES256', { publish: false })
    for (let i = 0; i < 5; i++) await assert.rejects(verify(await issuer.mint(claims(), { key: stranger })))
    assert.equal(issuer.jwksFetches, start + 2, 'a flood of unknown kids fetches nothing more')
  })

  test('Cache-Control max-age is followed; an issuer that is down keeps being served from the cache', async () => {
    const clock = manualClock()
    const { verify } = verifier(clock)
    issuer.cacheControl = 'public, max-age=120'
    const start = issuer.jwksFetches
    await verify(await issuer.mint(claims()))
    clock.advance(110_000)
    await verify(await issuer.mint(claims()))
    assert.equal(issuer.jwksFetches, start + 1, 'fresh for max-age')
    clock.advance(20_000)
    await verify(await issuer.mint(claims()))
    assert.equal(issuer.jwksFetches, start + 2, 'refetched once max-age passed')
    clock.advance(200_000)
    issuer.setDown(true)
    try {
      await verify(await issuer.mint(claims()))
    } finally {
      issuer.setDown(false)
    }
  })

  test('concurrent first uses share one fetch; nothing cached and the issuer down is ERR_JOIN_ISSUER_UNREACHABLE', async () => {
    const { verify } = verifier(manualClock())
    const start = issuer.jwksFetches
    const jwt = await issuer.mint(claims())
    await Promise.all([verify(jwt), verify(jwt), verify(jwt)])
    assert.equal(issuer.jwksFetches, start + 1)
    issuer.setDown(true)
    try {
      const fresh = verifier(manualClock())
      await assert.rejects(fresh.verify(jwt), (e: unknown) => e instanceof MemidError && e.code === 'ERR_JOIN_ISSUER_UNREACHABLE' && e.message.startsWith(`cannot get the signing keys of ${issuer.url}`))
    } finally {
      issuer.setDown(false)
    }
  })
})
