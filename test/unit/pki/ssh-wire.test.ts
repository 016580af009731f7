import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MemidError } from '../../../src/core/errors.ts'
import { SshReader, SshWriter, sshString } from '../../../src/pki/ssh-wire.ts'

const truncated = (what: string) => (e: unknown) => e instanceof MemidError && e.code === 'ERR_BAD_REQUEST' && e.message === `${what} is truncated`

describe('SshReader', () => {
  it('reads each type in order and reports its position', () => {
    const buf = Buffer.from('01' + '00' + '02' + 'deadbeef' + '0102030405060708' + '00000003616263' + '00000002c3a9', 'hex')
    const r = new SshReader(buf, 'test data')
    assert.equal(r.remaining, buf.length)
    assert.equal(r.u8(), 1)
    assert.equal(r.bool(), false)
    assert.equal(r.bool(), true, 'any non-zero byte is true')
    assert.equal(r.u32(), 0xdeadbeef)
    assert.equal(r.offset, 7)
    assert.equal(r.u64(), 0x0102030405060708n)
    assert.equal(r.string().toString('latin1'), 'abc')
    assert.equal(r.text(), 'é')
    assert.equal(r.remaining, 0)
    assert.equal(r.offset, buf.length)
    r.end()
  })

  it('refuses every read past the end, naming the data', () => {
    for (const [h, read] of [
      ['', (r: SshReader) => r.u8()], ['', (r: SshReader) => r.bool()], ['000000', (r: SshReader) => r.u32()],
      ['00000000000000', (r: SshReader) => r.u64()], ['00000004616263', (r: SshReader) => r.string()], ['000000', (r: SshReader) => r.string()],
    ] as const) assert.throws(() => read(new SshReader(Buffer.from(h, 'hex'), 'key blob')), truncated('key blob'), h)
    assert.throws(() => new SshReader(Buffer.alloc(0)).u8(), truncated('SSH data'), 'the default name')
  })

  it('stays inside its window of a larger buffer', () => {
    const buf = Buffer.from('ff' + '00000001' + '41' + 'ff', 'hex')
    const r = new SshReader(buf, 'frame', 1, 6)
    assert.equal(r.offset, 1)
    assert.equal(r.remaining, 5)
    assert.equal(r.text(), 'A')
    r.end()
    assert.throws(() => r.u8(), truncated('frame'), 'the byte after the window is not read')
    assert.throws(() => new SshReader(buf, 'frame', 1, 4).u32(), truncated('frame'))
    assert.equal(new SshReader(buf, 'frame', 1, 5).u32(), 1, 'exactly enough bytes')
  })

  it('refuses trailing bytes, saying how many', () => {
    const r = new SshReader(Buffer.from('010203', 'hex'), 'signature')
    r.u8()
    assert.throws(() => r.end(), (e: unknown) => e instanceof MemidError && e.code === 'ERR_BAD_REQUEST' && e.message === 'signature has 2 trailing bytes')
  })

  it('mpint: strips leading zeros, refuses negative values', () => {
    assert.equal(new SshReader(Buffer.from('000000030000ff', 'hex')).mpint().toString('hex'), 'ff')
    assert.equal(new SshReader(Buffer.from('00000002007f', 'hex')).mpint().toString('hex'), '7f')
    assert.equal(new SshReader(Buffer.from('000000020000', 'hex')).mpint().length, 0)
    assert.equal(new SshReader(Buffer.from('00000000', 'hex')).mpint().length, 0)
    assert.throws(() => new SshReader(Buffer.from('0000000180', 'hex'), 'rsa key').mpint(),
      (e: unknown) => e instanceof MemidError && e.code === 'ERR_BAD_REQUEST' && e.message === 'rsa key has a negative mpint')
  })
})

describe('SshWriter', () => {
  it('writes each type big-endian, strings with their length', () => {
    const b = new SshWriter().u8(7).u32(0x01020304).u64(0x1122334455667788n).string('é').string(Buffer.of(9)).toBuffer()
    assert.equal(b.toString('hex'), '07' + '01020304' + '1122334455667788' + '00000002c3a9' + '0000000109')
    assert.equal(sshString('ab').toString('hex'), '000000026162')
  })

  it('raw copies exactly the view it is given, not the whole underlying buffer', () => {
    const big = Buffer.from('aabbccdd', 'hex')
    assert.equal(new SshWriter().raw(big.subarray(1, 3)).toBuffer().toString('hex'), 'bbcc')
    assert.equal(new SshWriter().string(new Uint8Array(big.buffer, big.byteOffset + 2, 2)).toBuffer().toString('hex'), '00000002ccdd')
  })

  it('mpint: minimal, a zero byte before a set top bit, zero as the empty string', () => {
    const m = (h: string) => new SshWriter().mpint(Buffer.from(h, 'hex')).toBuffer().toString('hex')
    assert.equal(m('0000017f'), '00000002017f')
    assert.equal(m('80'), '000000020080')
    assert.equal(m('00ff01'), '0000000300ff01')
    assert.equal(m('0000'), '00000000')
    assert.equal(m(''), '00000000')
    assert.equal(m('7f'), '000000017f')
  })
})
