#!/usr/bin/env node
// Independent reference for CID / DAG-CBOR / CAR cross-checks, built on the
// npm `multiformats`, `@ipld/dag-json`, `@ipld/dag-cbor` and `@ipld/car`.
// Every command prints one JSON document on stdout; on any error it prints a
// message on stderr and exits non-zero (1 for bad input, 2 for bad usage).
//
//   node ipld.mjs cid-info CID
//     -> {"string", "version", "codec", "codec_code", "multihash_code",
//         "multihash_hex", "digest_hex", "base32", "v0"}
//        codec: the codec's name when known (else "0x<hex>"); multihash_hex is
//        the whole multihash (code varint + length varint + digest); base32 is
//        the CIDv1 form in base32; v0 is the CIDv0 form or null when the CID
//        cannot be written as v0 (only dag-pb + sha2-256 can).
//
//   node ipld.mjs dagcbor-encode  < doc.json
//     stdin: one DAG-JSON document (links {"/": "cid"}, bytes
//     {"/": {"bytes": "<base64, standard alphabet, no padding>"}}), parsed by
//     @ipld/dag-json, then encoded by @ipld/dag-cbor.
//     -> {"hex": "<dag-cbor bytes>", "cid": "<CIDv1 dag-cbor sha2-256>"}
//     Caveat: JavaScript has a single number type, so a DAG-JSON float with an
//     integral value (1.0) comes out as a CBOR integer; cross-check floats
//     only with non-integral values.
//
//   node ipld.mjs car-read FILE.car
//     -> {"version": 1|2, "roots": [cid...], "blocks": [{"cid", "size"}...]}
//     Blocks are listed in file order, duplicates included. Each block's bytes
//     are checked against its CID's multihash (sha2-256, sha2-512, identity);
//     a mismatch is an error. CIDs with other hash functions are listed in
//     "unverified". Add --hex to get each block's bytes as "hex" too.
//     A malformed or truncated CAR exits non-zero.
//
//   node ipld.mjs multibase  < request.json
//     stdin: {"encode": ["<hex>", ...], "decode": ["<multibase text>", ...]}
//     -> {"encoded": [{"<base name>": "<multibase text>", ...}, ...], "decoded": ["<hex>" | null, ...]}
//     Each byte string written in every base multiformats knows; each text decoded by the base its
//     prefix names, null where multiformats refuses it.
//
//   node ipld.mjs car-write OUT.car ROOT_CID [ROOT_CID...]  < blocks.jsonl
//     stdin: JSON lines {"cid": "...", "hex": "..."}, written in that order
//     with @ipld/car's CarWriter (CARv1). Blocks are NOT checked against their
//     CIDs, so tests can also craft CARs with bad blocks.
//     -> {"path": "OUT.car", "roots": [...], "blocks": N}

import { CarBlockIterator, CarWriter } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import * as dagJson from '@ipld/dag-json'
import { bases } from 'multiformats/basics'
import { base32 } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import { identity } from 'multiformats/hashes/identity'
import { sha256, sha512 } from 'multiformats/hashes/sha2'
import * as fs from 'node:fs'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

const CODEC_NAMES = {
  0x55: 'raw',
  0x70: 'dag-pb',
  0x71: 'dag-cbor',
  0x0129: 'dag-json',
  0x0200: 'json',
  0x51: 'cbor',
  0x0202: 'car',
  0x78: 'git-raw',
  0x0201: 'dag-jose'
}

const HASHERS = {
  [sha256.code]: sha256,
  [sha512.code]: sha512,
  [identity.code]: identity
}

class UsageError extends Error {}
// Errors about the input that need no stack trace.
class InputError extends Error {}

// Accept a CID in any multibase that multiformats knows (v0 is base58btc
// without prefix).
const anyBase = Object.values(bases).map((b) => b.decoder).reduce((a, b) => a.or(b))

function parseCid (s) {
  if (typeof s !== 'string' || s === '') throw new InputError(`not a CID: ${JSON.stringify(s)}`)
  try {
    return CID.parse(s, s.startsWith('Qm') ? undefined : anyBase)
  } catch (err) {
    throw new InputError(`invalid CID ${JSON.stringify(s)}: ${err.message}`)
  }
}

const toHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')

function fromHex (s, what) {
  if (typeof s !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(s)) throw new InputError(`${what}: not a hex string`)
  return new Uint8Array(Buffer.from(s, 'hex'))
}

async function readStdin () {
  const chunks = []
  for await (const c of process.stdin) chunks.push(c)
  return new Uint8Array(Buffer.concat(chunks))
}

function cidInfo (args) {
  if (args.length !== 1) throw new UsageError('usage: cid-info CID')
  const cid = parseCid(args[0])
  let v0 = null
  if (cid.code === 0x70 && cid.multihash.code === sha256.code && cid.multihash.digest.byteLength === 32) {
    v0 = cid.toV0().toString()
  }
  return {
    string: cid.toString(),
    version: cid.version,
    codec: CODEC_NAMES[cid.code] ?? `0x${cid.code.toString(16)}`,
    codec_code: cid.code,
    multihash_code: cid.multihash.code,
    multihash_hex: toHex(cid.multihash.bytes),
    digest_hex: toHex(cid.multihash.digest),
    base32: cid.toV1().toString(base32),
    v0
  }
}

async function dagcborEncode (args) {
  if (args.length !== 0) throw new UsageError('usage: dagcbor-encode < doc.json')
  const input = await readStdin()
  let value
  try {
    value = dagJson.decode(input)
  } catch (err) {
    throw new InputError(`stdin is not valid DAG-JSON: ${err.message}`)
  }
  const bytes = dagCbor.encode(value)
  const cid = CID.create(1, dagCbor.code, await sha256.digest(bytes))
  return { hex: toHex(bytes), cid: cid.toString() }
}

async function carRead (args) {
  const withHex = args.includes('--hex')
  const files = args.filter((a) => a !== '--hex')
  if (files.length !== 1) throw new UsageError('usage: car-read [--hex] FILE.car')
  const bytes = new Uint8Array(fs.readFileSync(files[0]))
  const iter = await CarBlockIterator.fromBytes(bytes)
  const roots = (await iter.getRoots()).map((c) => c.toString())
  const blocks = []
  const unverified = []
  for await (const { cid, bytes: data } of iter) {
    const hasher = HASHERS[cid.multihash.code]
    if (hasher === undefined) {
      unverified.push(cid.toString())
    } else {
      const digest = await hasher.digest(data)
      if (toHex(digest.digest) !== toHex(cid.multihash.digest)) {
        throw new InputError(`block ${cid} does not match its CID (hash of its ${data.byteLength} bytes differs)`)
      }
    }
    const b = { cid: cid.toString(), size: data.byteLength }
    if (withHex) b.hex = toHex(data)
    blocks.push(b)
  }
  return { version: iter.version, roots, blocks, unverified }
}

async function carWrite (args) {
  if (args.length < 2) throw new UsageError('usage: car-write OUT.car ROOT_CID [ROOT_CID...] < blocks.jsonl')
  const [out, ...rootStrs] = args
  const roots = rootStrs.map(parseCid)
  const text = Buffer.from(await readStdin()).toString('utf8')
  const blocks = []
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return
    let obj
    try {
      obj = JSON.parse(line)
    } catch (err) {
      throw new InputError(`stdin line ${i + 1}: not JSON: ${err.message}`)
    }
    blocks.push({ cid: parseCid(obj.cid), bytes: fromHex(obj.hex, `stdin line ${i + 1} hex`) })
  })
  const { writer, out: carBytes } = CarWriter.create(roots)
  const done = pipeline(Readable.from(carBytes), fs.createWriteStream(out))
  for (const b of blocks) await writer.put(b)
  await writer.close()
  await done
  return { path: out, roots: roots.map((c) => c.toString()), blocks: blocks.length }
}

async function multibase (args) {
  if (args.length !== 0) throw new UsageError('usage: multibase < request.json')
  let request
  try {
    request = JSON.parse(Buffer.from(await readStdin()).toString('utf8'))
  } catch (err) {
    throw new InputError(`stdin is not JSON: ${err.message}`)
  }
  const encoded = (request.encode ?? []).map((hex) => {
    const bytes = fromHex(hex, 'encode')
    return Object.fromEntries(Object.values(bases).map((b) => [b.name, b.encode(bytes)]))
  })
  const decoded = (request.decode ?? []).map((text) => {
    try {
      return toHex(anyBase.decode(text))
    } catch {
      return null
    }
  })
  return { encoded, decoded }
}

const COMMANDS = {
  'cid-info': cidInfo,
  'dagcbor-encode': dagcborEncode,
  'car-read': carRead,
  multibase,
  'car-write': carWrite
}

async function main () {
  const [cmd, ...args] = process.argv.slice(2)
  const fn = COMMANDS[cmd]
  if (fn === undefined) {
    throw new UsageError(`usage: node ipld.mjs {${Object.keys(COMMANDS).join('|')}} ...`)
  }
  const result = await fn(args)
  process.stdout.write(JSON.stringify(result) + '\n')
}

main().catch((err) => {
  process.stderr.write(`ipld.mjs: ${(err instanceof UsageError || err instanceof InputError) ? err.message : (err?.stack ?? err)}\n`)
  process.exit(err instanceof UsageError ? 2 : 1)
})
