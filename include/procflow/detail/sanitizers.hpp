// Which sanitizer this translation unit is built with: PROCFLOW_ASAN (AddressSanitizer),
// PROCFLOW_TSAN (ThreadSanitizer). GCC defines __SANITIZE_ADDRESS__ and __SANITIZE_THREAD__;
// clang (the asan preset's clang 19) has only the feature tests.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define PROCFLOW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCFLOW_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define PROCFLOW_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCFLOW_TSAN 1
#endif
#endif
