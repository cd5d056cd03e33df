// Control messages: round trips and validation on read.
#include "messages/control.hpp"

#include <catch2/catch.hpp>

using namespace duet::messages;

TEST_CASE("a prefill task round trips") {
  prefill_task t{5, 1, {1, 2, 3, 4}, 0, 6, 2, "fabric+shm://?name=00ff"};
  auto d = decode_prefill_task(encode(t));
  REQUIRE(d.ok());
  CHECK(*d == t);
}

TEST_CASE("a prefill task with an empty layer range or prompt is rejected") {
  prefill_task t{5, 1, {1, 2}, 3, 3, 0, ""};
  auto d = decode_prefill_task(encode(t));
  REQUIRE_FALSE(d.ok());
  CHECK_THAT(d.why().context, Catch::Contains("layer range"));
  prefill_task empty{5, 1, {}, 0, 1, 0, ""};
  CHECK_FALSE(decode_prefill_task(encode(empty)).ok());
}

TEST_CASE("a token chunk keeps tokens and positions and rejects gaps in positions") {
  token_chunk c;
  c.request_id = 9;
  c.tokens = {10, 11, 12};
  c.positions = {20, 21, 22};
  c.finished = true;
  auto d = decode_token_chunk(encode(c));
  REQUIRE(d.ok());
  CHECK(d->tokens == c.tokens);
  CHECK(d->positions == c.positions);
  CHECK(d->finished);

  c.positions = {20, 22, 23};
  auto gap = decode_token_chunk(encode(c));
  REQUIRE_FALSE(gap.ok());
  CHECK_THAT(gap.why().context, Catch::Contains("contiguous"));
  c.positions = {20, 21};
  CHECK_FALSE(decode_token_chunk(encode(c)).ok());
}

TEST_CASE("prefill result, decode admission, node hello and heartbeat round trip") {
  prefill_result r{1, 2, 33, 44, 6, {13, "kv pool full"}};
  auto dr = decode_prefill_result(encode(r));
  REQUIRE(dr.ok());
  CHECK(dr->first_token == 33);
  CHECK(dr->error.code == 13);
  CHECK(dr->error.context == "kv pool full");

  decode_admission a{1, 2, 100, 50, 6, 77, true, {}};
  auto da = decode_decode_admission(encode(a));
  REQUIRE(da.ok());
  CHECK(da->accepted);
  CHECK(da->max_tokens == 50);

  node_hello h{1, "node-a", "cpu", true, false, "zmq+tcp://127.0.0.1:5555"};
  auto dh = decode_node_hello(encode(h));
  REQUIRE(dh.ok());
  CHECK(dh->node_id == "node-a");
  CHECK(dh->kv_address == h.kv_address);
  CHECK(dh->prefill);

  heartbeat hb{"node-a", 8, 3, 1 << 20};
  auto dhb = decode_heartbeat(encode(hb));
  REQUIRE(dhb.ok());
  CHECK(dhb->sequence == 8);
  CHECK(dhb->kv_bytes_free == (1u << 20));
}

TEST_CASE("control readers reject garbage and truncated bytes with context") {
  node_hello h{1, "node-a", "cpu", true, false, "inproc://x"};
  auto bytes = encode(h);
  for (std::size_t n = 0; n < bytes.size(); n += 3) {
    auto d = decode_node_hello(std::span(bytes).first(n));
    INFO("length " << n);
    CHECK_FALSE(d.ok());
  }
  std::vector<std::byte> garbage(64, std::byte{0xff});
  auto d = decode_heartbeat(garbage);
  REQUIRE_FALSE(d.ok());
  CHECK_FALSE(d.why().context.empty());
}
