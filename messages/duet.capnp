# duet wire messages. Evolution rules (docs/messages.md): fields are append-only — a new field
# takes the next ordinal, ordinals are never reused or renumbered, a removed field is renamed
# obsoleteX and left in place; defaults are chosen so that an old message (field absent, read
# as its default) means the old behaviour. Readers validate every field before use.
@0x90d2c15568f4e836;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("duet::messages::wire");

# Same numbering as duet::messages::kv_dtype and duet::engine::dtype.
enum KvDtype {
  f32 @0;
  f16 @1;
  q80 @2;
}

# Same numbering as duet::transport::errc (0 = none); app-level codes are appended after them.
enum ErrorCode {
  none @0;
  timeout @1;
  peerDead @2;
  corrupt @3;
  truncated @4;
  duplicate @5;
  outOfOrder @6;
  oversized @7;
  malformed @8;
  backendUnavailable @9;
  badAddress @10;
  closed @11;
  internal @12;
  overloaded @13;      # admission refused: no KV pool room / queue full (429-style)
  badRequest @14;      # prompt too long, bad parameters
  cancelled @15;
}

# An error crossing the network: a code to act on and context for humans.
struct Error {
  code @0 :ErrorCode;
  context @1 :Text;
}

# Where the payload of a KvSegment is, when it is not inline.
struct RemoteRegion {
  offset @0 :UInt64;   # bytes from the start of the receiver window granted to this stream
  length @1 :UInt64;
}

# One layer's K and V for one token range of one request. Payload layout: K then V, each
# (tokenEnd - tokenBegin, nKvHeads, headSize) elements of dtype.
struct KvSegment {
  requestId @0 :UInt64;
  epoch @1 :UInt32;
  layer @2 :UInt32;
  tokenBegin @3 :UInt32;
  tokenEnd @4 :UInt32;
  dtype @5 :KvDtype;
  nKvHeads @6 :UInt32;
  headSize @7 :UInt32;
  checksumXxh3 @8 :UInt64;    # XXH3_64bits of the payload
  payloadBytes @9 :UInt64;
  sequence @10 :UInt64;       # per-stream transport sequence: 0, 1, 2, ...
  payload :union {
    inline @11 :Data;         # in this message (builders reference the caller's bytes: no copy)
    nextFrame @12 :Void;      # the following transport frame (zmq multipart)
    remote @13 :RemoteRegion; # already written by RMA into the receiver's window
  }
  streamId @14 :UInt64;       # the sender's stream (StreamHello.streamId); 0 where the
                              # transport knows the stream otherwise (zmq identity)
}

# First frame of a transport stream, sender -> receiver.
struct StreamHello {
  protocolVersion @0 :UInt32 = 1; # 2: the sender sends StreamAlive when a credit asks
  streamId @1 :UInt64;        # chosen by the sender, unique per receiver
  endpointName @2 :Data;      # fabric: the sender's fi_getname, so the receiver can reply
}

# Receiver -> sender: permission to have grantBytes more payload bytes outstanding.
struct Credit {
  streamId @0 :UInt64;
  grantBytes @1 :UInt64;
  windowBytes @2 :UInt64;     # total window (first credit); the sender never exceeds it
  segmentBytesMax @3 :UInt64; # the receiver's limit (first credit)
  windowAddress @4 :UInt64;   # fabric RMA: target address of the window (FI_MR_VIRT_ADDR)
  windowKey @5 :UInt64;       # fabric RMA: memory registration key (0 = no RMA, tagged)
  keepaliveMs @6 :UInt32;     # first credit: an idle sender says StreamAlive at least this
                              # often, or its stream ends as dead (0 = not needed; protocol 2)
  receipts @7 :Bool;          # first credit (fabric): this receiver sends receiptThrough as it
                              # takes segments; the sender's flush waits for it
  receiptThrough @8 :UInt64;  # fabric receipt: every segment of a sequence below this has
                              # been taken (checked, accepted or rejected) by the receiver
}

# Everything that travels on a transport stream is one of these.
struct TransportFrame {
  union {
    segment @0 :KvSegment;
    hello @1 :StreamHello;
    credit @2 :Credit;
    error @3 :Error;
    bye @4 :Void;             # the sender closes the stream (zmq: the connection says which)
    end @5 :StreamEnd;        # the sender closes this stream (fabric). A union member, not a
                              # field beside the union: a UInt64 there grew every frame, every
                              # KV envelope included, by 8 bytes
    alive @6 :StreamAlive;    # an idle sender lives (Credit.keepaliveMs; protocol 2)
  }
}

# Sender -> receiver, while it sends nothing else: the stream's sender still lives.
struct StreamAlive {
  streamId @0 :UInt64;
}

# Sender -> receiver: the stream is over; the receiver frees what it held for it.
struct StreamEnd {
  streamId @0 :UInt64;
}

# Controller -> prefill shard: run these tokens through a layer range, stream the KV.
struct PrefillTask {
  requestId @0 :UInt64;
  epoch @1 :UInt32;
  tokens @2 :List(Int32);     # the prompt, token ids
  layerBegin @3 :UInt32;
  layerEnd @4 :UInt32;        # exclusive
  chunkTokens @5 :UInt32;     # tokens per KV segment (0 = whole prompt)
  kvDestination @6 :Text;     # transport address of the decode lane's receiver
}

# Prefill shard -> request actor.
struct PrefillResult {
  requestId @0 :UInt64;
  epoch @1 :UInt32;
  firstToken @2 :Int32;       # sampled after the last layer (-1 when this shard is not last)
  promptTokens @3 :UInt32;
  segmentsSent @4 :UInt32;
  error @5 :Error;            # code none = success
}

# Decode lane <-> controller: take a sequence whose KV is (being) sent.
struct DecodeAdmission {
  requestId @0 :UInt64;
  epoch @1 :UInt32;
  promptTokens @2 :UInt32;
  maxTokens @3 :UInt32;
  nLayers @4 :UInt32;
  firstToken @5 :Int32;
  accepted @6 :Bool;
  error @7 :Error;            # why not accepted
}

# Decode lane -> request actor: generated tokens with their positions (contiguous).
struct TokenChunk {
  requestId @0 :UInt64;
  epoch @1 :UInt32;
  tokens @2 :List(Int32);
  positions @3 :List(UInt32); # same length as tokens, strictly +1 each
  finished @4 :Bool;
  error @5 :Error;
}

# Node -> controller on join.
struct NodeHello {
  protocolVersion @0 :UInt32 = 1;
  nodeId @1 :Text;
  profile @2 :Text;           # trainium2, wse3, cpu, ...
  prefill @3 :Bool;
  decode @4 :Bool;
  kvAddress @5 :Text;         # where this node receives KV segments
}

# Node -> controller, periodically; silence past the bound means the node is gone.
struct Heartbeat {
  nodeId @0 :Text;
  sequence @1 :UInt64;
  activeSequences @2 :UInt32;
  kvBytesFree @3 :UInt64;
}
