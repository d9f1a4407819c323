#include "data/builtin_corpus.h"

#include "core/rng.h"

namespace dsv3 {

namespace {
const char* kNames[] = {"Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"};
const char* kAdjs[] = {"small", "old", "bright", "quiet", "green", "brave", "tired", "happy",
                       "strange", "gentle", "red", "clever"};
const char* kNouns[] = {"cat", "dog", "bird", "fox", "robot", "sailor", "farmer", "child",
                        "teacher", "king", "river", "tree"};
const char* kPlaces[] = {"forest", "village", "city", "harbor", "garden", "castle", "desert",
                         "library"};
const char* kVerbs[] = {"saw", "helped", "followed", "found", "called", "watched", "met",
                        "painted"};
const char* kThings[] = {"apples", "coins", "books", "stones", "shells", "cards", "pears",
                         "keys"};
template <size_t N>
const char* pick(Rng& r, const char* (&a)[N]) {
  return a[r.below(N)];
}
}  // namespace

std::string builtin_corpus_text(uint64_t seed, size_t bytes) {
  Rng r(seed);
  std::string s;
  s.reserve(bytes + 256);
  while (s.size() < bytes) {
    switch (r.below(4)) {
      case 0: {
        const char* place = pick(r, kPlaces);
        s += "Once upon a time there was a ";
        s += pick(r, kAdjs);
        s += " ";
        const char* noun = pick(r, kNouns);
        s += noun;
        s += " who lived in a ";
        s += place;
        s += ". Every day the ";
        s += noun;
        s += " ";
        s += pick(r, kVerbs);
        s += " a ";
        s += pick(r, kAdjs);
        s += " ";
        s += pick(r, kNouns);
        s += " near the ";
        s += place;
        s += ".\n";
        break;
      }
      case 1: {
        const char* a = pick(r, kNames);
        const char* b = pick(r, kNames);
        const char* thing = pick(r, kThings);
        const int n = 2 + int(r.below(18)), m = 1 + int(r.below(uint64_t(n - 1)));
        s += a;
        s += " has " + std::to_string(n) + " " + thing + ". ";
        s += a;
        s += " gives " + std::to_string(m) + " to ";
        s += b;
        s += ". Now ";
        s += a;
        s += " has " + std::to_string(n - m) + " " + thing + ".\n";
        break;
      }
      case 2: {
        const int x = int(r.below(50)), y = int(r.below(50));
        s += std::to_string(x) + " plus " + std::to_string(y) + " is " + std::to_string(x + y) +
             ".\n";
        break;
      }
      default: {
        s += "The ";
        s += pick(r, kAdjs);
        s += " ";
        s += pick(r, kNouns);
        s += " ";
        s += pick(r, kVerbs);
        s += " the ";
        s += pick(r, kAdjs);
        s += " ";
        s += pick(r, kNouns);
        s += " in the ";
        s += pick(r, kPlaces);
        s += ".\n";
      }
    }
  }
  return s;
}

}  // namespace dsv3
