// js-ipfs 0.66 (through its dependencies) calls Promise.withResolvers, which node < 22 lacks.
// Loaded with `node --require` before the daemon starts.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
