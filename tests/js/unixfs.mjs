#!/usr/bin/env node
// Independent reference for UnixFS CIDs: imports a file or directory tree with
// the npm `ipfs-unixfs-importer` configured to behave like kubo's
// `ipfs add -r PATH` with default settings, and prints the CIDs as JSON.
//
// Usage: node unixfs.mjs [--cid-version 0|1] [--hidden]
//                         [--shard-split-threshold-bytes N] PATH
// --shard-split-threshold-bytes overrides the HAMT threshold (default 262144,
// kubo's default); kubo's equivalent is the `Internal.UnixFSShardingSizeThreshold`
// config (kubo's own sharness tests set it to "1B" to force sharding).
//
// Output (stdout, one JSON document):
//   {"root": "<cid of PATH>",
//    "entries": {"<path as kubo prints it>": "<cid>", ...}}
// Entry keys are what kubo prints after `added <cid> `: the base name of PATH
// followed by the path inside it ("top", "top/a.txt", "top/sub", ...). There is
// one entry per file, symlink and directory (empty ones included). The key
// order carries no meaning, except that the top entry comes last as in kubo.
//
// Importer options and why they match kubo's defaults (kubo's `ipfs add` is
// built on boxo's UnixFS importer; these are the settings IPIP-499 calls the
// `unixfs-v0-2015` profile, kubo's long-standing default, plus kubo's
// `--cid-version=1` variant of it):
//
// * cidVersion: as requested. kubo defaults to CIDv0; `--cid-version=1` gives
//   CIDv1 for every dag-pb node (files and directories).
// * rawLeaves: `cidVersion === 1`. kubo's `--raw-leaves` is not set by default;
//   kubo then derives it from the CID version (`rawblks = cidVer > 0` in
//   core/commands/add.go): true for CIDv1, false for CIDv0.
// * leafType: 'file'. Only used when rawLeaves is false. boxo's *balanced*
//   layout builds leaves with `NewLeafDataNode(ft.TFile)`, i.e. dag-pb nodes
//   whose UnixFS Data has Type=File, Data=<chunk>, filesize=<chunk length>.
//   The importer's other value, 'raw' (UnixFS Type=Raw), is what boxo's
//   *trickle* layout uses (the importer docs say so too); kubo's default
//   layout is balanced, so 'file' is right.
// * reduceSingleLeafToSelf: true. A file that fits in one chunk is that single
//   leaf (a raw block under CIDv1, a UnixFS File node with the data inline
//   under CIDv0), as in boxo's balanced layout. The empty file is one (empty)
//   chunk: QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH under CIDv0 and
//   bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku under CIDv1.
// * chunker: fixedSize 262144 (kubo's default `--chunker=size-262144`).
// * layout: balanced with maxChildrenPerNode 174 (boxo's
//   helpers.DefaultLinksPerBlock; kubo's default is not `--trickle`).
// * no mtime / mode (kubo's `--preserve-mtime`/`--preserve-mode` are off).
// * hash: sha2-256 (the importer always uses it; kubo's default `--hash`).
// * wrapWithDirectory: false (kubo's `-w` is off).
// * HAMT sharding: the importer's defaults are kept: shardSplitThresholdBytes
//   262144, shardSplitStrategy 'links-bytes', shardFanoutBits 8. In the
//   pinned ipfs-unixfs-importer 17.1.1 a directory is converted to a HAMT when
//   the sum over its links of (UTF-8 byte length of name + CID byte length) is
//   strictly greater than 262144. That is kubo's `Internal.UnixFSShardingSizeThreshold`
//   default of 256KiB with boxo's legacy link-size estimate
//   (`linksize.LinkSizeFunction` = len(name) + cid.ByteLen()) and boxo's 256-way
//   fanout with murmur3-x64-64 hashing. Caveat: current boxo switches when the
//   estimate is "> threshold" (its comment says "> not >="), as the importer
//   does; older boxo releases (before its IPIP-499 work, so older kubo
//   releases) switched at ">= threshold", so for those a directory whose
//   estimate is exactly 262144 bytes would differ. Checked against kubo's own
//   sharness vectors (t0260-sharding.sh: 100, 2000 and 5960 files, default
//   and "1B" thresholds), which tests/test_jsref.py reproduces.
//   We deliberately do not pass `profile`: 'unixfs-v0-2015' would set the same
//   values for CIDv0, while 'unixfs-v1-2025' (1 MiB chunks, 1024 links,
//   'block-bytes') is NOT what `ipfs add --cid-version=1` does by default.
//
// What is walked, as in kubo's `ipfs add -r` defaults:
// * hidden entries (names starting with '.') inside PATH are skipped, as kubo
//   does unless `--hidden` is given (pass --hidden here to include them); PATH
//   itself is always imported whatever its name.
// * symlinks inside PATH are not followed: they become UnixFS symlink nodes
//   holding the link target (kubo's default). PATH itself is lstat-ed too, so
//   a symlink given as PATH is stored as a symlink; kubo's handling of a
//   symlink argument has varied across versions (--dereference-args), so
//   tests should not rely on that case.
// * other special files (sockets, FIFOs, devices) are an error.
// Limitations: names must be valid UTF-8 (Node reads them as strings) and a
// directory name must not end with a backslash (the importer treats "\/" as an
// escaped slash); both are reported as errors instead of giving wrong CIDs.

import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { MemoryBlockstore } from 'blockstore-core/memory'
import * as fs from 'node:fs'
import * as path from 'node:path'

const CHUNK_SIZE = 262144
const MAX_CHILDREN_PER_NODE = 174
const DEFAULT_SHARD_SPLIT_THRESHOLD_BYTES = 262144

function usage (msg) {
  if (msg) process.stderr.write(`unixfs.mjs: ${msg}\n`)
  process.stderr.write('usage: node unixfs.mjs [--cid-version 0|1] [--hidden] [--shard-split-threshold-bytes N] PATH\n')
  process.exit(2)
}

function parseArgs (argv) {
  let cidVersion = 0
  let hidden = false
  let shardSplitThresholdBytes = DEFAULT_SHARD_SPLIT_THRESHOLD_BYTES
  let target
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--cid-version') {
      const v = argv[++i]
      if (v !== '0' && v !== '1') usage(`--cid-version must be 0 or 1, got ${v}`)
      cidVersion = Number(v)
    } else if (a.startsWith('--cid-version=')) {
      const v = a.slice('--cid-version='.length)
      if (v !== '0' && v !== '1') usage(`--cid-version must be 0 or 1, got ${v}`)
      cidVersion = Number(v)
    } else if (a === '--shard-split-threshold-bytes') {
      const v = argv[++i]
      if (!/^[1-9][0-9]*$/.test(v ?? '')) usage(`--shard-split-threshold-bytes must be a positive integer, got ${v}`)
      shardSplitThresholdBytes = Number(v)
    } else if (a === '--hidden') {
      hidden = true
    } else if (a === '--help' || a === '-h') {
      usage()
    } else if (a.startsWith('--')) {
      usage(`unknown option ${a}`)
    } else if (target === undefined) {
      target = a
    } else {
      usage('only one PATH is accepted')
    }
  }
  if (target === undefined) usage('missing PATH')
  return { cidVersion, hidden, shardSplitThresholdBytes, target }
}

function checkName (name, where) {
  if (name.includes('\uFFFD')) {
    throw new Error(`${where}: name is not valid UTF-8 (or contains U+FFFD), unsupported`)
  }
}

/**
 * Walks `abs` (already lstat-ed as `st`) and produces import candidates in
 * pre-order: a directory candidate always comes before its contents. (The
 * importer's tree builder would otherwise replace a directory that already
 * has children with an empty one.)
 * `emptyDirs` collects relative paths of directories with no imported child.
 */
function * walk (abs, rel, st, opts, emptyDirs) {
  if (st.isSymbolicLink()) {
    yield { path: rel, link: fs.readlinkSync(abs) }
  } else if (st.isFile()) {
    yield { path: rel, content: fs.createReadStream(abs, { highWaterMark: 1 << 20 }) }
  } else if (st.isDirectory()) {
    const base = path.basename(rel)
    if (base.endsWith('\\')) {
      throw new Error(`${rel}: directory names ending with a backslash are unsupported`)
    }
    yield { path: rel }
    // kubo lists a directory with os.ReadDir, which sorts by name (byte order
    // of the UTF-8 names). Order only affects the print order, not CIDs.
    const names = fs.readdirSync(abs)
      .filter((n) => opts.hidden || !n.startsWith('.'))
      .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    if (names.length === 0) emptyDirs.add(rel)
    for (const name of names) {
      checkName(name, `${rel}/${name}`)
      const childAbs = path.join(abs, name)
      yield * walk(childAbs, `${rel}/${name}`, fs.lstatSync(childAbs), opts, emptyDirs)
    }
  } else {
    throw new Error(`${rel}: unsupported file type (not a regular file, directory or symlink)`)
  }
}

async function main () {
  const { cidVersion, hidden, shardSplitThresholdBytes, target } = parseArgs(process.argv.slice(2))
  const abs = path.resolve(target)
  const st = fs.lstatSync(abs)
  // kubo names the top entry after the base name of the argument.
  const top = path.basename(abs)
  if (top === '') throw new Error('cannot import the file system root')
  checkName(top, top)

  const options = {
    cidVersion,
    rawLeaves: cidVersion === 1,
    leafType: 'file',
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: CHUNK_SIZE }),
    layout: balanced({ maxChildrenPerNode: MAX_CHILDREN_PER_NODE }),
    wrapWithDirectory: false,
    // 262144 unless overridden, equal to the importer's default; strategy and
    // fanout are the importer's defaults ('links-bytes', 8 bits = 256), see
    // the header comment.
    shardSplitThresholdBytes
  }

  const emptyDirs = new Set()
  const blockstore = new MemoryBlockstore()
  const entries = {}
  let last
  for await (const entry of importer(walk(abs, top, st, { hidden }, emptyDirs), blockstore, options)) {
    const p = entry.path ?? ''
    entries[p] = entry.cid.toString()
    last = p
  }

  // The importer stores an empty directory as a link of its parent but does
  // not yield it on its own. Its CID is the importer's own empty-directory
  // node (no mtime/mode), which we obtain by importing a lone empty directory
  // with the same options.
  if (emptyDirs.size > 0) {
    let emptyCid
    for await (const e of importer([{ path: 'empty' }], new MemoryBlockstore(), options)) {
      emptyCid = e.cid.toString()
    }
    for (const d of emptyDirs) {
      if (!(d in entries)) entries[d] = emptyCid
    }
  }

  // Order like kubo's output: the importer already yields files first and
  // then directories bottom-up; re-insert the top entry last for sure.
  if (!(top in entries)) {
    throw new Error(`importer produced no entry for ${top} (got: ${Object.keys(entries).join(', ')}; last ${last})`)
  }
  const root = entries[top]
  const ordered = {}
  for (const [k, v] of Object.entries(entries)) if (k !== top) ordered[k] = v
  ordered[top] = root

  process.stdout.write(JSON.stringify({ root, entries: ordered }) + '\n')
}

main().catch((err) => {
  process.stderr.write(`unixfs.mjs: ${err?.stack ?? err}\n`)
  process.exit(1)
})
