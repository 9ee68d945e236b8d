/* A minimal mbedTLS TLS client that reports whether the server's certificate verifies.
 *
 * The same checks as a VoIP app built on mbedTLS (liblinphone, PJSIP with mbedTLS): the chain against a CA
 * file, and the name given to mbedtls_ssl_set_hostname() -- a DNS name or, as phones dialling a PBX by address
 * do, an IP address in text form -- with MBEDTLS_SSL_VERIFY_REQUIRED.
 *
 *   mbedtls_verify CA_FILE HOST PORT NAME
 *
 * Prints one line and exits 0 "verify ok", 1 "verify failed flags=0x... [cn-mismatch] <mbedTLS's reasons>",
 * 2 "error ..." (no TLS session for another reason: connection refused, bad CA file, ...).
 * Build: gcc -o mbedtls_verify mbedtls_verify.c -lmbedtls -lmbedx509 -lmbedcrypto
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

static int fail(const char *what, int ret)
{
    char buf[200];
    mbedtls_strerror(ret, buf, sizeof buf);
    printf("error %s: -0x%04x %s\n", what, (unsigned) -ret, buf);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s CA_FILE HOST PORT NAME\n", argv[0]);
        return 2;
    }
    const char *ca_file = argv[1], *host = argv[2], *port = argv[3], *name = argv[4];
    mbedtls_net_context net;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context rng;
    int ret, code;

    mbedtls_net_init(&net);
    mbedtls_ssl_init(&ssl);
    mbedtls_ssl_config_init(&conf);
    mbedtls_x509_crt_init(&ca);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&rng);

    if ((ret = mbedtls_ctr_drbg_seed(&rng, mbedtls_entropy_func, &entropy, NULL, 0)) != 0) {
        code = fail("seeding the random generator", ret);
        goto out;
    }
    if ((ret = mbedtls_x509_crt_parse_file(&ca, ca_file)) != 0) {
        code = fail("reading the CA file", ret);
        goto out;
    }
    if ((ret = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                           MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
        code = fail("configuring TLS", ret);
        goto out;
    }
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &rng);
    if ((ret = mbedtls_ssl_setup(&ssl, &conf)) != 0 || (ret = mbedtls_ssl_set_hostname(&ssl, name)) != 0) {
        code = fail("setting up the TLS session", ret);
        goto out;
    }
    if ((ret = mbedtls_net_connect(&net, host, port, MBEDTLS_NET_PROTO_TCP)) != 0) {
        code = fail("connecting", ret);
        goto out;
    }
    mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, NULL);
    while ((ret = mbedtls_ssl_handshake(&ssl)) != 0) {
        if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != MBEDTLS_ERR_SSL_WANT_WRITE)
            break;
    }
    uint32_t flags = mbedtls_ssl_get_verify_result(&ssl);
    if (ret == 0 && flags == 0) {
        printf("verify ok (mbedTLS %s)\n", MBEDTLS_VERSION_STRING);
        mbedtls_ssl_close_notify(&ssl);
        code = 0;
    } else if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED || (flags != 0 && flags != (uint32_t) -1)) {
        char info[512];
        mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
        for (char *p = info; *p; p++)
            if (*p == '\n')
                *p = ';';
        printf("verify failed flags=0x%08x%s %s (mbedTLS %s)\n", (unsigned) flags,
               (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) ? " cn-mismatch" : "", info, MBEDTLS_VERSION_STRING);
        code = 1;
    } else {
        code = fail("in the TLS handshake", ret);
    }
out:
    mbedtls_net_free(&net);
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&ca);
    mbedtls_ctr_drbg_free(&rng);
    mbedtls_entropy_free(&entropy);
    return code;
}
