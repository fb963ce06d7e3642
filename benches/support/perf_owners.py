"""Innermost-owner attribution of `perf script` samples of the gateway threads (`gw`), as used
for the request/reply and directory read profiles in docs/benchmarks.md (issue 16):

    perf script -i rr.data --comm gw --no-inline -F comm,tid,ip,sym > rr.script
    python3 benches/support/perf_owners.py rr.script


Stacks copied with dwarf,16384 are cut off at 16 KiB (deep future nesting), so the outer frames
are unreliable; each sample goes to the innermost frame matching a specific rule (tier 1),
else to the innermost generic one (tier 2). Kernel and allocator are counted by leaf frame.
"""
import re, sys
from collections import Counter

TIER1 = [
    (r'magistral::http::admission', 'admission middleware (in-flight slot, route cost)'),
    (r'magistral::http::extract::Caller|magistral::http::authenticate|magistral::participants::.*authenticate|magistral::participants::hash_token', 'authentication (bearer token → participant)'),
    (r'magistral::http::console::session_layer', 'console session layer (cookie check)'),
    (r'magistral::http::access', 'access-log middleware'),
    (r'magistral::request::send::nats_headers|StoredAttributes::to_nats_headers', 'request: CloudEvents → NATS headers'),
    (r'magistral::request::send::authorize', 'request: authorize subject'),
    (r'magistral::request::send::check_reply|honours_reply|cloudevents_of|media_type_of', 'request: reply checks (JSON, content type)'),
    (r'magistral::request::send::check\b|magistral::request::send::check$|magistral::publish::check_data|magistral::publish::check_attributes|magistral::publish::json|check_strict|magistral::charset', 'request: data checks (attributes, strict JSON)'),
    (r'magistral::publish::cloudevents::from_http_headers', 'request: CloudEvents attributes from HTTP'),
    (r'magistral::http::request::reply_answer|magistral::http::kv::value_answer|magistral::http::kv::etag|httpdate', 'response building (headers, ETag, Last-Modified)'),
    (r'magistral::http::read_body|http_body_util|hyper::body::incoming', 'request body read'),
    (r'^metrics::|metrics_exporter_prometheus|metrics_util|magistral::telemetry::catalogue', 'metrics'),
    (r'^tracing::|tracing_core|tracing_subscriber|magistral::telemetry::traces', 'tracing'),
    (r'magistral::directory::open|magistral::directory::operations::open|Catalog.*directory', 'directory: open (permission check)'),
    (r'magistral::directory::stores', 'directory: open-bucket cache (Stores::get)'),
    (r'async_nats::jetstream::kv', 'async-nats KV get (client side: subject, request, decode)'),
    (r'async_nats::jetstream', 'async-nats JetStream (client side)'),
    (r'async_nats::client::Client|async_nats::client::', 'async-nats request (client side: inbox, enqueue, await)'),
    (r'ConnectionHandler|async_nats::connection::|async_nats::', 'async-nats connection task (socket, parse, dispatch)'),
    (r'magistral::directory::', 'directory: other'),
    (r'<F as axum::handler::Handler', 'handler bodies (request/kv, inlined into axum Handler::call)'),
    (r'magistral::', 'other gateway code'),
    (r'^hyper::|hyper_util|^httparse|^http::', 'hyper HTTP/1.1 server (read, parse, encode, write)'),
    (r'^axum|^tower|<axum|<tower|tower_http|futures_util', 'axum/tower routing and middleware plumbing'),
]
TIER2 = [
    (r'tokio::|<tokio|^mio::|parking_lot', 'tokio scheduler, timers, I/O driver'),
]
ALLOC = re.compile(r'^(malloc|free|cfree|calloc|realloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|unlink_chunk.*|__libc_malloc|__libc_free|tcache.*|_?mi_.*|mi_.*)$')

def parse(path):
    frames, head = [], None
    for line in open(path, errors='replace'):
        line = line.rstrip('\n')
        if not line.strip():
            if head is not None:
                yield frames
            frames, head = [], None
            continue
        if head is None:
            head = line
            continue
        parts = line.strip().split(' ', 1)
        addr = parts[0]
        sym = parts[1] if len(parts) > 1 else '[unknown]'
        frames.append((addr, sym))
    if head is not None:
        yield frames

def owner(frames):
    for addr, sym in frames:
        for rx, name in TIER1:
            if re.search(rx, sym):
                return name
    for addr, sym in frames:
        for rx, name in TIER2:
            if re.search(rx, sym):
                return name
    return 'other / unattributed'


STARTUP = re.compile(r'magistral::run::|Engine::new|reconcile|rustls_native_certs')


def main(path):
    own, kernel, alloc, total = Counter(), Counter(), Counter(), 0
    for frames in parse(path):
        # Gateway start-up (certificates, configuration) is not the request path.
        if not frames or any(STARTUP.search(s) for _, s in frames):
            continue
        total += 1
        o = owner(frames)
        own[o] += 1
        if frames[0][0].startswith('ffffffff'):
            kernel[o] += 1
        if ALLOC.match(frames[0][1]):
            alloc[o] += 1
    print(f'{total} samples')
    print('| owner (innermost recognised frame) | share | of which kernel leaf | of which allocator leaf |')
    print('|---|---:|---:|---:|')
    for o, n in own.most_common():
        print(f'| {o} | {100*n/total:.1f} % | {100*kernel[o]/total:.1f} % | {100*alloc[o]/total:.1f} % |')
    k, a = sum(kernel.values()), sum(alloc.values())
    print(f'| all | 100 % | {100*k/total:.1f} % | {100*a/total:.1f} % |')


if __name__ == '__main__':
    main(sys.argv[1])
