// Sensitive-information scrubbing (D5): every type found in its common formats, checksums that
// reject look-alikes, prose that must stay untouched, typed placeholders and counts.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "curate/pii.h"

namespace dsv3::curate {
namespace {

// The type of the single match in `text`, or Count_ if there is none / several.
PiiType only_type(const PiiScrubber& s, const std::string& text, std::string* matched = nullptr) {
  std::vector<PiiMatch> m;
  s.find(text, m);
  if (m.size() != 1) return PiiType::Count_;
  if (matched) *matched = text.substr(m[0].begin, m[0].end - m[0].begin);
  return m[0].type;
}

const PiiScrubber& scrubber() {
  static PiiScrubber s{PiiConfig{}};
  return s;
}

struct Case {
  const char* text;
  PiiType type;
  const char* match;  // the exact span replaced
};

TEST(CuratePii, FindsEveryTypeInContext) {
  const Case cases[] = {
      {"Write to jane.doe+news@mail.example.co.uk today.", PiiType::Email,
       "jane.doe+news@mail.example.co.uk"},
      {"Call +1 (415) 555-0132 now", PiiType::Phone, "+1 (415) 555-0132"},
      {"Call +44 20 7946 0958.", PiiType::Phone, "+44 20 7946 0958"},
      {"Tel: +49-30-12345678", PiiType::Phone, "+49-30-12345678"},
      {"ring +33 6 12 34 56 78 please", PiiType::Phone, "+33 6 12 34 56 78"},
      {"phone +86 138 0013 8000", PiiType::Phone, "+86 138 0013 8000"},
      {"office (212) 555-0199", PiiType::Phone, "(212) 555-0199"},
      {"cell 415-555-0132", PiiType::Phone, "415-555-0132"},
      {"cell 415.555.0132", PiiType::Phone, "415.555.0132"},
      {"toll free 1-800-555-0199", PiiType::Phone, "1-800-555-0199"},
      {"London 020 7946 0958", PiiType::Phone, "020 7946 0958"},
      {"Paris 06 12 34 56 78", PiiType::Phone, "06 12 34 56 78"},
      {"server at 192.168.1.20.", PiiType::Ipv4, "192.168.1.20"},
      {"addr 2001:db8:85a3::8a2e:370:7334 ok", PiiType::Ipv6, "2001:db8:85a3::8a2e:370:7334"},
      {"addr 2001:0db8:0000:0000:0000:ff00:0042:8329", PiiType::Ipv6,
       "2001:0db8:0000:0000:0000:ff00:0042:8329"},
      {"link-local fe80::1ff:fe23:4567:890a here", PiiType::Ipv6, "fe80::1ff:fe23:4567:890a"},
      {"card 4111 1111 1111 1111 exp", PiiType::CreditCard, "4111 1111 1111 1111"},
      {"card 5555-5555-5555-4444", PiiType::CreditCard, "5555-5555-5555-4444"},
      {"amex 378282246310005.", PiiType::CreditCard, "378282246310005"},
      {"IBAN GB82 WEST 1234 5698 7654 32 please", PiiType::Iban, "GB82 WEST 1234 5698 7654 32"},
      {"IBAN DE89370400440532013000", PiiType::Iban, "DE89370400440532013000"},
      {"SSN 078-05-1120 on file", PiiType::UsSsn, "078-05-1120"},
      {"身份证 11010519491231002X 号", PiiType::CnResidentId, "11010519491231002X"},
      {"key AKIAIOSFODNN7EXAMPLE in config", PiiType::ApiKey, "AKIAIOSFODNN7EXAMPLE"},
      {"google AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI yes", PiiType::ApiKey,
       "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"},
      {"stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", PiiType::ApiKey, "sk_live_4eC39HqLyjWDarjtT1zdp7dc"},
      {"api_key = \"a8f5f167f44f4964e6c998dee827110c\"", PiiType::ApiKey,
       "a8f5f167f44f4964e6c998dee827110c"},
      {"token ghp_16C7e42F292c6912E7710c838347Ae178B4a in CI", PiiType::Token,
       "ghp_16C7e42F292c6912E7710c838347Ae178B4a"},
      {"slack xoxb-2631-26314-iUuhzbT3tV8a here", PiiType::Token, "xoxb-2631-26314-iUuhzbT3tV8a"},
      {"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF123_-xyz", PiiType::Token,
       "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF123_-xyz"},
      {"password: hunter2hunter2X9", PiiType::Token, "hunter2hunter2X9"},
  };
  for (const Case& c : cases) {
    std::string got;
    EXPECT_EQ(int(only_type(scrubber(), c.text, &got)), int(c.type)) << c.text;
    EXPECT_EQ(got, c.match) << c.text;
  }
}

TEST(CuratePii, PrivateKeysWithAndWithoutTheEndLine) {
  const std::string key =
      "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n"
      "Z1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----";
  std::string text = "before\n" + key + "\nafter";
  PiiCounts counts{};
  EXPECT_EQ(scrubber().scrub(text, counts), 1u);
  EXPECT_EQ(text, "before\n|||PRIVATE_KEY|||\nafter");
  EXPECT_EQ(counts[size_t(PiiType::PrivateKey)], 1u);
  std::string cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQQQ=";
  PiiCounts c2{};
  EXPECT_EQ(scrubber().scrub(cut, c2), 1u);
  EXPECT_EQ(cut, "|||PRIVATE_KEY|||");
}

TEST(CuratePii, ChecksumsRejectLookAlikes) {
  EXPECT_TRUE(luhn_valid("4111111111111111"));
  EXPECT_FALSE(luhn_valid("4111111111111112"));
  EXPECT_TRUE(iban_valid("GB82 WEST 1234 5698 7654 32"));
  EXPECT_FALSE(iban_valid("GB82 WEST 1234 5698 7654 33"));  // check digits
  EXPECT_FALSE(iban_valid("GB82WEST123456987654"));          // length for GB is 22
  EXPECT_TRUE(cn_resident_id_valid("11010519491231002X"));
  EXPECT_FALSE(cn_resident_id_valid("110105194912310021"));  // check character
  EXPECT_FALSE(cn_resident_id_valid("110105194902300021"));  // 30 February
  EXPECT_TRUE(us_ssn_valid("078-05-1120"));
  EXPECT_FALSE(us_ssn_valid("666-05-1120"));
  EXPECT_FALSE(us_ssn_valid("900-05-1120"));
  EXPECT_FALSE(us_ssn_valid("078-00-1120"));
  EXPECT_FALSE(us_ssn_valid("078-05-0000"));
  // ... and so the scrubber leaves them alone
  for (const char* s : {"card 4111 1111 1111 1112 end", "iban GB82 WEST 1234 5698 7654 33",
                        "id 110105194912310021 x", "ssn 666-05-1120", "ip 256.1.1.1",
                        "num 1234567890123456"})
    EXPECT_EQ(int(only_type(scrubber(), s)), int(PiiType::Count_)) << s;
}

TEST(CuratePii, LeavesOrdinaryTextAlone) {
  const char* clean[] = {
      "In 1995, 2,300 people attended; the score was 3-1 and the ratio 1:2.",
      "See chapter 3.4.1 and version 10.2 of the report (pp. 123-145).",
      "The meeting is at 10:30:45 on 2021-03-04 in room 12.",
      "Python slices like x[1::2] and a[::-1] are common; so is dict[key].",
      "He paid $1,234.56 for 3 items on 12/05/2020, order #4521.",
      "The ISBN is 978-0-306-40615-7 and the year 1876.",
      "password = get_password_from_user()",
      "the token was spent; the secret is out; my api key is in the vault",
      "Coordinates 51.5074, -0.1278 and elevation 35 m.",
      "Call extension 4521 or room 101.",
      "population of 8 336 817 in 2019",
      "The value 1e10 and 0x1F and 0755 are numbers.",
  };
  for (const char* s : clean) {
    std::vector<PiiMatch> m;
    scrubber().find(s, m);
    EXPECT_TRUE(m.empty()) << s << " -> " << (m.empty() ? "" : std::string(s).substr(m[0].begin, m[0].end - m[0].begin));
  }
}

TEST(CuratePii, PlaceholdersCountsAndSwitches) {
  std::string t = "a@b.io and c@d.org, call 415-555-0132, ip 10.0.0.1";
  PiiCounts c{};
  EXPECT_EQ(scrubber().scrub(t, c), 4u);
  EXPECT_EQ(t, "|||EMAIL_ADDRESS||| and |||EMAIL_ADDRESS|||, call |||PHONE_NUMBER|||, ip |||IP_ADDRESS|||");
  EXPECT_EQ(c[size_t(PiiType::Email)], 2u);
  EXPECT_EQ(c[size_t(PiiType::Phone)], 1u);
  EXPECT_EQ(c[size_t(PiiType::Ipv4)], 1u);
  // idempotent: placeholders are not PII
  PiiCounts c2{};
  EXPECT_EQ(scrubber().scrub(t, c2), 0u);
  // a switched-off type stays
  PiiConfig cfg;
  cfg.email = false;
  PiiScrubber no_email(cfg);
  std::string u = "mail a@b.io";
  PiiCounts c3{};
  EXPECT_EQ(no_email.scrub(u, c3), 0u);
  EXPECT_EQ(u, "mail a@b.io");
}

}  // namespace
}  // namespace dsv3::curate
