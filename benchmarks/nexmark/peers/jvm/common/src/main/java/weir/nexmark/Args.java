package weir.nexmark;

import java.util.HashMap;
import java.util.Map;

/** The peers' command line: {@code --name value} pairs, every one required unless it has a default. */
public final class Args {
    private final Map<String, String> values = new HashMap<>();

    public Args(String[] argv) {
        if (argv.length % 2 != 0) {
            throw new IllegalArgumentException("expected --name value pairs, got " + String.join(" ", argv));
        }
        for (int i = 0; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --name, got " + argv[i]);
            }
            values.put(argv[i].substring(2), argv[i + 1]);
        }
    }

    public String get(String name) {
        String value = values.get(name);
        if (value == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return value;
    }

    public int getInt(String name, int fallback) {
        String value = values.get(name);
        return value == null ? fallback : Integer.parseInt(value);
    }
}
