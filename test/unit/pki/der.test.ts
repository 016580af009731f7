import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { bitString, children, directoryString, ipBytes, octetString, oid, readTlv, seq, TAG, time, tlv, uint, utf8String } from '../../../src/pki/der.ts'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

describe('DER writer', () => {
  it('uses the shortest length form at every boundary and refuses values of 16 MiB or more', () => {
    const head = (n: number) => hex(tlv(0x04, Buffer.alloc(n)).subarray(0, 6))
    assert.equal(head(0).slice(0, 4), '0400')
    assert.equal(head(0x7f).slice(0, 4), '047f')
    assert.equal(head(0x80).slice(0, 6), '048180')
    assert.equal(head(0xff).slice(0, 6), '0481ff')
    assert.equal(head(0x100).slice(0, 8), '04820100')
    assert.equal(head(0xffff).slice(0, 8), '0482ffff')
    assert.equal(head(0x10000).slice(0, 10), '0483010000')
    assert.equal(head(0xffffff).slice(0, 10), '0483ffffff')
    assert.equal(hex(tlv(0x30, Buffer.of(1), Buffer.of(2, 3))), '3003010203', 'parts are concatenated and counted together')
    assert.throws(() => tlv(0x04, Buffer.alloc(0x1000000)), { name: 'RangeError', message: 'DER value too long' })
  })

  it('encodes OIDs as X.690 says, multi-byte arcs included, and refuses malformed ones', () => {
    assert.equal(hex(oid('1.2.840.113549.1.1.11')), '06092a864886f70d01010b')
    assert.equal(hex(oid('2.5.29.17')), '0603551d11')
    assert.equal(hex(oid('1.3.6.1.4.1.11129.2.4.2')), '060a2b06010401d679020402')
    assert.equal(hex(oid('2.999.16384')), '0605883781' + '8000', 'a first arc pair above 127 and a three-byte arc')
    assert.equal(hex(oid('2.5')), '060155', 'two arcs are an OID')
    assert.equal(hex(oid('0.9.2342.19200300.100.1.25')), '060a0992268993f22c640119', 'zero arcs are allowed')
    assert.equal(hex(oid('1.2.0')), '06022a00')
    for (const bad of ['1', '1.x', '1.-2', '1.2.3.4.5.1e400', '']) assert.throws(() => oid(bad), { name: 'TypeError', message: `bad OID "${bad}"` }, bad)
  })

  it('writes non-negative INTEGERs minimally, with a zero byte before a set top bit', () => {
    assert.equal(hex(uint(Buffer.of(0x01))), '020101')
    assert.equal(hex(uint(Buffer.of(0x00, 0x00, 0x7f))), '02017f')
    assert.equal(hex(uint(Buffer.of(0x00, 0x12, 0x34))), '02021234')
    assert.equal(hex(uint(Buffer.of(0x00, 0x80))), '02020080')
    assert.equal(hex(uint(Buffer.of(0xff, 0x01))), '020300ff01')
    assert.equal(hex(uint(Buffer.of(0x00, 0x00))), '020100')
    assert.equal(hex(uint(Buffer.alloc(0))), '020100')
  })

  it('bit, octet and text strings', () => {
    assert.equal(hex(bitString(Buffer.of(0xab))), '030200ab')
    assert.equal(hex(octetString(Buffer.of(0xab))), '0401ab')
    assert.equal(hex(utf8String('é')), '0c02c3a9')
    assert.equal(hex(seq()), '3000')
    assert.equal(hex(directoryString("Az09 '()+,-./:=?")), '1310' + Buffer.from("Az09 '()+,-./:=?").toString('hex'))
    for (const s of ['a@b', 'a_b', 'a*b', 'é', 'a"b']) assert.equal(directoryString(s)[0], TAG.UTF8_STRING, s)
    assert.equal(hex(directoryString('')), '1300')
  })

  it('UTCTime from 1950 through 2049, GeneralizedTime outside, whole seconds in UTC', () => {
    const t = (iso: string) => Buffer.from(time(new Date(iso))).toString('latin1')
    assert.equal(t('2049-12-31T23:59:59.999Z'), '\x17\x0d491231235959Z')
    assert.equal(t('2050-01-01T00:00:00Z'), '\x18\x0f20500101000000Z')
    assert.equal(t('1950-01-01T00:00:00Z'), '\x17\x0d500101000000Z')
    assert.equal(t('1949-12-31T23:59:59Z'), '\x18\x0f19491231235959Z')
    assert.equal(t('2026-03-04T05:06:07Z'), '\x17\x0d260304050607Z')
  })

  it('IP addresses as 4 or 16 bytes in every IPv6 spelling', () => {
    assert.equal(hex(ipBytes('10.1.2.255')), '0a0102ff')
    assert.equal(hex(ipBytes('::1')), '00000000000000000000000000000001')
    assert.equal(hex(ipBytes('::')), '0'.repeat(32))
    assert.equal(hex(ipBytes('fe80::')), 'fe80' + '0'.repeat(28))
    assert.equal(hex(ipBytes('2001:db8:0:0:1:0:0:1')), '20010db8000000000001000000000001')
    assert.equal(hex(ipBytes('2001:db8::ff:1')), '20010db80000000000000000' + '00ff0001')
    assert.equal(hex(ipBytes('::ffff:127.0.0.1')), '00000000000000000000ffff7f000001')
    assert.equal(hex(ipBytes('64:ff9b::192.0.2.33')), '0064ff9b0000000000000000c0000221')
    assert.equal(hex(ipBytes('::ffff:10.200.30.4')), '00000000000000000000ffff0ac81e04')
    assert.equal(hex(ipBytes('::ffff:1.2.255.4')), '00000000000000000000ffff0102ff04')
    assert.equal(hex(ipBytes('1:2:3:4:5:6:1.2.3.4')), '00010002000300040005000601020304')
    for (const bad of ['localhost', '1.2.3', '::g', '']) assert.throws(() => ipBytes(bad), { name: 'TypeError', message: `not an IP address: "${bad}"` }, bad)
  })
})

describe('DER reader', () => {
  it('reads short and long lengths and the children of a constructed value', () => {
    const inner = [octetString(Buffer.alloc(200, 1)), utf8String('x'), uint(Buffer.of(5))]
    const whole = Buffer.concat([Buffer.of(0xff), seq(...inner), Buffer.of(0xee)])
    const s = readTlv(whole, 1)
    assert.deepEqual(s, { tag: 0x30, start: 1, body: 4, end: whole.length - 1 })
    const kids = children(whole, s)
    assert.deepEqual(kids.map((k) => k.tag), [TAG.OCTET_STRING, TAG.UTF8_STRING, TAG.INTEGER])
    assert.deepEqual(kids[0], { tag: 4, start: 4, body: 7, end: 207 })
    assert.deepEqual(kids[2], { tag: 2, start: 210, body: 212, end: 213 })
    const big = tlv(0x04, Buffer.alloc(0x10000))
    assert.deepEqual(readTlv(big, 0), { tag: 4, start: 0, body: 5, end: big.length })
    assert.deepEqual(children(Buffer.from('3000', 'hex'), readTlv(Buffer.from('3000', 'hex'), 0)), [])
  })

  it('refuses truncated values, bad length forms and values running past their parent', () => {
    const bad = (h: string, message: string, at = 0, limit?: number) =>
      assert.throws(() => readTlv(Buffer.from(h, 'hex'), at, limit), { name: 'RangeError', message }, h)
    bad('04', 'DER: truncated')
    bad('0403aabb', 'DER: truncated')
    bad('0480', 'DER: bad length')
    bad('0484000000010000', 'DER: bad length')
    bad('0482ff', 'DER: bad length')
    bad('048201', 'DER: bad length')
    bad('048105', 'DER: truncated')
    bad('0401aa', 'DER: truncated', 0, 2)
    bad('0401aa0401bb', 'DER: truncated', 3, 5)
    assert.deepEqual(readTlv(Buffer.from('0401aa', 'hex'), 0, 3), { tag: 4, start: 0, body: 2, end: 3 })
    assert.deepEqual(readTlv(Buffer.from('0400', 'hex'), 0, 2), { tag: 4, start: 0, body: 2, end: 2 })
    const parent = Buffer.from('30030402aabb', 'hex')
    assert.throws(() => children(parent, readTlv(parent, 0)), RangeError, 'a child longer than its parent')
  })
})
