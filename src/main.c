/*
 * forkd: parse the command line, load the configuration, hand over to the
 * master (or check the file, or ask the running daemon to reload).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "master.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/forkd/forkd.conf"

enum { OPT_RELOAD = 256, OPT_UPGRADE };

static const struct option long_options[] = {
	{ "config",	required_argument, NULL, 'c' },
	{ "test",	no_argument,	   NULL, 't' },
	{ "version",	no_argument,	   NULL, 'V' },
	{ "help",	no_argument,	   NULL, 'h' },
	{ "reload",	no_argument,	   NULL, OPT_RELOAD },
	{ "upgrade",	no_argument,	   NULL, OPT_UPGRADE },
	{ NULL, 0, NULL, 0 }
};

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: forkd [-c FILE] [-t] [-V] [-h] [--reload] [--upgrade]\n"
	    "  -c, --config FILE  configuration file (default %s)\n"
	    "  -t, --test         check the configuration and exit\n"
	    "      --reload       ask the running forkd to reload and wait for the outcome\n"
	    "      --upgrade      ask the running forkd to start the binary installed at its\n"
	    "                     path and hand it every session; wait for the outcome\n"
	    "  -V, --version      print the version and exit\n"
	    "  -h, --help         print this help and exit\n", DEFAULT_CONFIG);
}

int
main(int argc, char *argv[])
{
	const char *path = DEFAULT_CONFIG;
	struct config_errors errs;
	struct fk_config *cfg;
	bool test = false, reload = false;
	const char *request = "reload";
	int ch, i;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":c:tVh", long_options, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = true;
			break;
		case 'V':
			printf("forkd %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		case OPT_RELOAD:
			reload = true;
			request = "reload";
			break;
		case OPT_UPGRADE:
			reload = true;
			request = "upgrade";
			break;
		case ':':
			fprintf(stderr, "forkd: option '%s' needs a value\n", argv[optind - 1]);
			usage(stderr);
			return 2;
		default:
			if (optopt != 0)
				fprintf(stderr, "forkd: unknown option '-%c'\n", optopt);
			else
				fprintf(stderr, "forkd: unknown option '%s'\n", argv[optind - 1]);
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "forkd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (test && reload) {
		fprintf(stderr, "forkd: --test and --%s do not go together\n", request);
		return 2;
	}

	cfg = config_load(path, &errs);
	if (cfg == NULL && reload) {
		/* the running forkd says what is wrong (and logs it, and shows it
		 * in STATUS=); a broken file only hides a configured socket path */
		char ctl[108] = "", sock[108];
		struct fk_config fallback = { .path = (char *)path, .control_socket = ctl };

		config_peek_string(path, "control_socket", ctl, sizeof(ctl));
		if (master_control_path(&fallback, sock, sizeof(sock))[0] != '\0')
			return master_request(&fallback, request);
	}
	if (cfg == NULL) {
		for (i = 0; i < errs.count; i++)
			fprintf(stderr, "%s\n", errs.msg[i]);
		if (errs.dropped > 0)
			fprintf(stderr, "%s: %d more errors not shown\n", path, errs.dropped);
		return 1;
	}
	if (test) {
		printf("%s: configuration OK\n", path);
		config_free(cfg);
		return 0;
	}
	if (reload) {
		int rc = master_request(cfg, request);

		config_free(cfg);
		return rc;
	}
	log_init();
	log_set_level(cfg->log_level);
	master_set_argv(argv);
	return master_run(cfg);
}
